"""Graph autoencoder with a GAT encoder and two decoders (Kipf & Welling 2016, GAE; Velickovic et al.
2018, GAT), as in the trace-anomaly seed tools: a feature decoder reconstructs each span's numeric
features and its service and operation, and an inner-product structure decoder reconstructs the
call edges. A pure ``nn.Module``: training and scoring live in :mod:`detectors.traces.gat_gae`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import GATConv


class GATGraphAutoencoder(nn.Module):
    """GAT encoder, feature decoder and inner-product structure decoder.

    Args:
        numeric_dim: numeric node features (standardised).
        n_services, n_operations: vocabulary sizes; code 0 is the unknown bucket.
        embed_dim: size of the service and operation embeddings.
        hidden_dim: per-head size of the first GAT layer.
        latent_dim: size of the node latent ``z``.
        heads: attention heads of the first GAT layer (concatenated).
    """

    def __init__(self, numeric_dim: int, n_services: int, n_operations: int, embed_dim: int = 8,
                 hidden_dim: int = 32, latent_dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.numeric_dim = numeric_dim
        self.service = nn.Embedding(n_services + 1, embed_dim)
        self.operation = nn.Embedding(n_operations + 1, embed_dim)
        in_dim = numeric_dim + 3 * embed_dim
        self.gat1 = GATConv(in_dim, hidden_dim, heads=heads)
        self.gat2 = GATConv(hidden_dim * heads, latent_dim, heads=1)
        self.decode_numeric = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, numeric_dim))
        self.decode_service = nn.Linear(latent_dim, n_services + 1)
        self.decode_operation = nn.Linear(latent_dim, n_operations + 1)

    def encode(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Node latents from ``x`` = numeric features then service, operation and root-operation codes."""
        codes = x[:, self.numeric_dim:].long()
        names = torch.cat([self.service(codes[:, 0]), self.operation(codes[:, 1]), self.operation(codes[:, 2])], dim=1)
        h = torch.nn.functional.elu(self.gat1(torch.cat([x[:, : self.numeric_dim], names], dim=1), edge_index))
        return self.gat2(h, edge_index)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Latents, reconstructed numeric features, service logits and operation logits."""
        z = self.encode(x, edge_index)
        return z, self.decode_numeric(z), self.decode_service(z), self.decode_operation(z)

    @staticmethod
    def edge_logits(z: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """Inner-product decoder: the logit that nodes ``pairs[0]`` and ``pairs[1]`` are linked."""
        return (z[pairs[0]] * z[pairs[1]]).sum(dim=1)
