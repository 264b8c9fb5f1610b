"""LogTraceGuard's contrastive training: two augmented views of every batch of trace graphs, and
InfoNCE at the node, edge and graph level between them (GraphCL, You et al., NeurIPS 2020; the
three levels after LogTraceGuard).

View A drops a share of the nodes (never a trace's first, so no trace vanishes) with their edges;
view B drops a share of the edges. The node term matches each node kept in A with itself in B
against ``SAMPLE`` sampled others; the edge term does the same for the calls present in both
views, each seen from its two ends' embeddings; the graph term matches each trace's pooled
embedding across the views. Training stops early on the held-out traces' loss, computed on the
same views every epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from detectors.torch_model import EarlyStopping, reproducible_threads

LEVELS = ("node", "edge", "graph")
SAMPLE = 512  # nodes or edges per InfoNCE term (the full similarity matrix of a batch is quadratic)

Batch = Callable[[np.ndarray], tuple[Any, Any, Any, Any]]
"""Sorted trace positions -> (x, edge_index, edge_attr, batch) tensors of their graphs."""


@dataclass
class ContrastiveTraining:
    """The settings of one training run (the detector's parameters of the same names)."""

    levels: tuple[str, ...]
    hidden: int
    projection: int
    temperature: float
    drop_node: float
    drop_edge: float
    epochs: int
    patience: int
    batch_traces: int
    learning_rate: float
    seed: int

    def augment(self, tensors: tuple[Any, ...], size: int, rng: np.random.Generator, device: Any):
        """A batch of ``size`` traces twice: view A without some nodes, view B without some edges."""
        import torch

        x, edges, edge_attr, batch = (t.to(device) for t in tensors)
        n = x.shape[0]
        graph = batch.cpu().numpy()
        first = np.r_[True, graph[1:] != graph[:-1]] if n else np.zeros(0, bool)
        keep_node = (rng.random(n) >= self.drop_node) | first
        kept = np.flatnonzero(keep_node)
        new_id = np.full(n, -1)
        new_id[kept] = np.arange(kept.size)
        e = edges.cpu().numpy()
        edge_in_a = keep_node[e[0]] & keep_node[e[1]] if e.size else np.zeros(0, bool)
        edge_in_b = rng.random(e.shape[1]) >= self.drop_edge
        on = lambda mask: torch.from_numpy(mask).to(device)  # noqa: E731
        view_a = (x[on(kept)], on(new_id[e[:, edge_in_a]]), edge_attr[on(edge_in_a)], batch[on(kept)])
        view_b = (x, edges[:, on(edge_in_b)], edge_attr[on(edge_in_b)], batch)
        both = edge_in_a & edge_in_b
        shared_edges = (new_id[e[:, both]], e[:, both])  # the same edges, indexed in view A and in view B
        return view_a, view_b, kept, shared_edges, size

    def loss(self, encoder: Any, heads: Any, views: tuple, rng: np.random.Generator) -> Any:
        """The sum of the InfoNCE terms of the trained levels."""
        import torch

        from detectors.traces.ltg_model import info_nce, pool

        (xa, ea, aa, ba), (xb, eb, ab, bb), kept, (edges_a, edges_b), size = views
        ha, hb = encoder(xa, ea, aa), encoder(xb, eb, ab)
        device = ha.device
        on = lambda index: torch.from_numpy(index).to(device)  # noqa: E731
        total = torch.zeros((), device=device)
        if "node" in self.levels and kept.size > 1:
            pick = np.sort(rng.choice(kept.size, min(SAMPLE, kept.size), replace=False))
            total = total + info_nce(heads.node(ha[on(pick)]), heads.node(hb[on(kept[pick])]), self.temperature)
        if "edge" in self.levels and edges_a.shape[1] > 1:
            pick = np.sort(rng.choice(edges_a.shape[1], min(SAMPLE, edges_a.shape[1]), replace=False))
            src_a, dst_a = (on(edges_a[i, pick]) for i in (0, 1))
            src_b, dst_b = (on(edges_b[i, pick]) for i in (0, 1))
            total = total + info_nce(heads.edge(torch.cat([ha[src_a], ha[dst_a]], dim=1)),
                                     heads.edge(torch.cat([hb[src_b], hb[dst_b]], dim=1)), self.temperature)
        if "graph" in self.levels and size > 1:
            total = total + info_nce(heads.graph(pool(ha, ba, size)), heads.graph(pool(hb, bb, size)), self.temperature)
        return total

    def fit(self, encoder: Any, batch_of: Batch, train: np.ndarray, validation: np.ndarray,
            rng: np.random.Generator, device: Any) -> list[tuple[float, float]]:
        """Train ``encoder`` in place; the best epoch's weights are kept. Returns (train, held-out) loss per epoch."""
        import torch
        from tqdm.auto import tqdm

        from detectors.traces.ltg_model import ContrastiveHeads

        torch.manual_seed(self.seed)
        heads = ContrastiveHeads(self.hidden, self.projection).to(device)
        optimiser = torch.optim.Adam([*encoder.parameters(), *heads.parameters()], lr=self.learning_rate)
        stopper = EarlyStopping(self.patience, min_gain=0.005)
        history: list[tuple[float, float]] = []
        parts = [p for p in np.array_split(validation, max(1, int(np.ceil(validation.size / self.batch_traces)))) if p.size]
        with reproducible_threads(device):
            for _ in tqdm(range(self.epochs), desc="logtraceguard", unit="epoch", disable=None, leave=False):
                encoder.train()
                total = 0.0
                shuffled = rng.permutation(train)
                for start in range(0, shuffled.size, self.batch_traces):
                    chosen = np.sort(shuffled[start:start + self.batch_traces])
                    optimiser.zero_grad()
                    loss = self.loss(encoder, heads, self.augment(batch_of(chosen), chosen.size, rng, device), rng)
                    if loss.requires_grad:
                        loss.backward()
                        optimiser.step()
                    total += float(loss.detach()) * chosen.size
                encoder.eval()
                fixed = np.random.default_rng(self.seed + 1)  # the same views every epoch
                with torch.no_grad():
                    held_out = sum(float(self.loss(encoder, heads, self.augment(batch_of(part), part.size, fixed, device),
                                                   fixed)) * part.size for part in parts) / max(validation.size, 1)
                history.append((total / max(train.size, 1), held_out))
                if stopper.should_stop(held_out, encoder):
                    break
        stopper.restore(encoder)
        return history
