"""LogTraceGuard's networks: a log-aware graph encoder, the contrastive heads that train it, and the
scorer that turns its embeddings into trace scores. Pure ``nn.Module``s, written in plain torch
(``index_add_`` / ``scatter_reduce``) so that the scorer compiles with ``torch.jit.script`` and
serves without melt or PyTorch Geometric; training lives in :mod:`detectors.traces.logtraceguard`.

- Encoder: an operation embedding joined to the node's span and log features (standardised by
  their training mean and spread, so a flag that fires in 0.4% of training calls enters at about
  15 and moves the embedding as much as a common input's ordinary range does), then ``layers``
  edge-conditioned GIN layers (GINE, Hu et al., ICLR 2020: a neighbour's message is
  ``relu(h_j + W e_ij)``, summed, then an MLP), each added to its input (residual), so a node's
  own features survive the message passing.
- Contrastive heads (GraphCL, You et al., NeurIPS 2020, at the three levels LogTraceGuard uses):
  projections of nodes, of edges (both ends) and of graphs (mean and max pooling), compared across
  two augmented views with InfoNCE.
- Scorer: every component in nats of rarity (``-log p``). A node's inputs against its operation's
  training calls (:func:`detectors.traces.ltg_one_class.input_rarity`: how rarely each input moves
  and a heavy tail for how far; timing on a Pareto tail; a failed node's log inputs against failed
  training nodes), in four groups (timing, structure, logs, errors) that each score their rarest
  input less the log of their size; a trace's worst node per group, its errors added up where
  they began. The node's distance to its operation's
  training centre in the embedding (a robust z-score against that operation's training nodes)
  and the graph's distance to the training graphs' centre, on the same scale. The one-class
  score is the largest weighted component; inputs are scored directly because an input that
  rarely varies in training (an error flag, a missing call) gets little gradient from the
  contrastive loss, and the embedding and graph distances weigh 0 by default, as on the
  synthetic fault sets and on Nezha TrainTicket they add more false alarms than faults
  (docs/benchmarks.md). With a PU head (trained on labelled faulty traces), the head's logit
  over the graph embedding and the components is added (below).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detectors.traces.ltg_one_class import CALLEE_FAILED, FAILED, OK


class EdgeConv(nn.Module):
    """GINE layer: ``mlp((1 + eps) h_i + sum_j relu(h_j + W e_ij))``."""

    def __init__(self, dim: int, edge_dim: int) -> None:
        super().__init__()
        self.edge = nn.Linear(edge_dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.eps = nn.Parameter(torch.zeros(1))

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        message = torch.relu(h[edge_index[0]] + self.edge(edge_attr))
        summed = torch.zeros_like(h).index_add_(0, edge_index[1], message)
        return self.mlp((1 + self.eps) * h + summed)


class LogTraceEncoder(nn.Module):
    """Node embeddings from ``x`` = node features then the operation code (as a float), and edge features.

    Args:
        feature_dim: node features before the operation code.
        edge_dim: edge features.
        n_operations: operation vocabulary size; code 0 is the unknown bucket.
        embed_dim: size of the operation embedding.
        hidden: size of the node embeddings.
        layers: GINE layers.
    """

    def __init__(self, feature_dim: int, edge_dim: int, n_operations: int, embed_dim: int = 8, hidden: int = 32,
                 layers: int = 2) -> None:
        super().__init__()
        self.operation = nn.Embedding(n_operations + 1, embed_dim)
        self.inp = nn.Linear(feature_dim + embed_dim, hidden)
        self.convs = nn.ModuleList([EdgeConv(hidden, edge_dim) for _ in range(layers)])
        self.register_buffer("input_mean", torch.zeros(feature_dim))
        self.register_buffer("input_scale", torch.ones(feature_dim))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        code = x[:, -1].long()
        features = (x[:, :-1] - self.input_mean) / self.input_scale
        h = torch.tanh(self.inp(torch.cat([features, self.operation(code)], dim=1)))
        for conv in self.convs:
            h = h + torch.tanh(conv(h, edge_index, edge_attr))
        return h


def pool(h: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Mean and max of each graph's node embeddings, side by side."""
    total = torch.zeros(num_graphs, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, batch, h)
    count = torch.zeros(num_graphs, dtype=h.dtype, device=h.device).index_add_(0, batch, torch.ones_like(batch, dtype=h.dtype))
    return torch.cat([total / count.clamp(min=1).unsqueeze(1), worst(h, batch, num_graphs)], dim=1)


class ContrastiveHeads(nn.Module):
    """Projection heads of the node, edge and graph views (used in training only)."""

    def __init__(self, hidden: int, projection: int = 32) -> None:
        super().__init__()
        self.node = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, projection))
        self.edge = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, projection))
        self.graph = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, projection))


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (NT-Xent) of paired rows: row i of ``a`` should match row i of ``b`` only."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def rarity(z: torch.Tensor, log_count: torch.Tensor) -> torch.Tensor:
    """Nats of rarity of ``z`` sigmas: ``-log(2 P(N > z) x count)``, 0 where that is below 0."""
    return torch.relu(-(0.6931471805599453 + torch.special.log_ndtr(-z) + log_count))  # log 2


class LogTraceGuardScorer(nn.Module):
    """Trace and node scores from a trained encoder and what training taught about normal calls.

    Args:
        encoder: the trained :class:`LogTraceEncoder`.
        node_centre, node_median, node_scale: per operation code, the mean training embedding and
            the median and robust spread of its nodes' distances to it.
        feature_median, feature_scale, feature_move_nats: per operation code and input (the
            operation code itself left out), as :func:`detectors.traces.ltg_one_class.input_rarity`
            gives them: a deviation ``d`` scores ``move_nats + size_shape x log(1 + |d| / scale)``
            nats, a timing input ``(value - median) / scale`` nats.
            The tables have two rows after the operation codes: the statistics of failed training
            nodes, then of those whose callee failed.
        feature_timing, feature_log_count: per input, whether it is a timing input, and the log of
            its group's size (taken off the group's rarest input: Bonferroni).
        feature_by_status, status_known: per input, 1 where a node that failed (or whose callee
            failed) reads it against the failed (callee-failed) row instead of its operation's: the
            log inputs, so that a failure's own error lines are not a second surprise; per failure
            state, 1 where training saw enough such nodes for its row to be read.
        feature_groups: inputs x groups, 1 where the input belongs to the group (timing,
            structure, logs, errors: :data:`detectors.traces.ltg_one_class.GROUPS`).
        feature_doubles: per input, 1 for the flag that doubles a node's error rarity (an error
            its service did not log).
        graph_centre, graph_median, graph_scale: the same as the node's for pooled graph embeddings.
        component_weight: per one-class component (embedding, the groups, graph), its weight in
            the trace's one-class score, the largest weighted component.
        size_shape: the Lomax shape of a move's size.
        error_group, error_column, depth_column: the errors group's column of ``feature_groups``,
            and the inputs that say a span failed and how deep it is. A failed span none of whose
            callees failed is where an error began (as is a call that failed at its client only);
            a failed span whose callee failed only passed the error on, and its errors count
            nothing. A trace adds up the error rarities of its beginnings (independent failures
            multiply their probabilities), so two errors that began apart outrank one that climbed
            a chain, and a chain counts at its origin, whose service the evidence then names.
        pu_head: a head over ``[graph embedding, asinh of the components]``, or None (one-class).
            With a head, a trace scores its one-class score plus ``pu_weight`` times the head's
            logit as a robust z-score over the unlabelled training traces (buffers ``pu_median``,
            ``pu_scale``, ``pu_weight``): the labelled kinds rise, and a kind nobody labelled keeps
            its one-class score instead of the head's guess.
    """

    def __init__(self, encoder: LogTraceEncoder, node_centre: torch.Tensor, node_median: torch.Tensor,
                 node_scale: torch.Tensor, feature_median: torch.Tensor, feature_scale: torch.Tensor,
                 feature_move_nats: torch.Tensor, feature_timing: torch.Tensor, feature_by_status: torch.Tensor,
                 status_known: torch.Tensor, feature_log_count: torch.Tensor,
                 feature_groups: torch.Tensor, feature_doubles: torch.Tensor, graph_centre: torch.Tensor,
                 graph_median: torch.Tensor, graph_scale: torch.Tensor, component_weight: torch.Tensor,
                 size_shape: float, error_group: int, error_column: int, depth_column: int,
                 pu_head: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.error_group = error_group
        self.error_column = error_column
        self.depth_column = depth_column
        buffers = {"node_centre": node_centre, "node_median": node_median, "node_scale": node_scale,
                   "feature_median": feature_median, "feature_scale": feature_scale,
                   "feature_move_nats": feature_move_nats, "feature_timing": feature_timing,
                   "feature_by_status": feature_by_status, "status_known": status_known,
                   "feature_log_count": feature_log_count, "feature_groups": feature_groups,
                   "feature_doubles": feature_doubles, "component_weight": component_weight,
                   "size_shape": torch.tensor([size_shape], dtype=node_centre.dtype), "graph_centre": graph_centre,
                   "graph_median": graph_median, "graph_scale": graph_scale}
        for name, value in buffers.items():
            self.register_buffer(name, value)
        hidden = node_centre.shape[1]
        self.pu_head = pu_head if pu_head is not None else pu_head_for(hidden, component_weight.shape[0])
        self.register_buffer("use_pu", torch.tensor([1.0 if pu_head is not None else 0.0], dtype=node_centre.dtype))
        # the head's logit as a robust z-score over the unlabelled training traces, and its weight
        self.register_buffer("pu_median", torch.zeros(1, dtype=node_centre.dtype))
        self.register_buffer("pu_scale", torch.ones(1, dtype=node_centre.dtype))
        self.register_buffer("pu_weight", torch.ones(1, dtype=node_centre.dtype))

    def parts(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor, batch: torch.Tensor,
              num_graphs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Node scores (the largest weighted component of each node), graph embeddings, and per
        graph its unweighted one-class components in nats of rarity: its worst node by embedding,
        by each input group (errors: the sum over the nodes where its errors began), and its graph."""
        h = self.encoder(x, edge_index, edge_attr)
        code = x[:, -1].long()
        no_count = torch.zeros(1, dtype=h.dtype, device=h.device)
        embedding_z = (torch.linalg.vector_norm(h - self.node_centre[code], dim=1) - self.node_median[code]) / self.node_scale[code]
        embedding = rarity(embedding_z, no_count)
        failed, callee_failed = failures(x, edge_index, self.error_column, self.depth_column)
        n_codes = self.feature_median.shape[0] - 2
        status = failure_state(failed, callee_failed)
        readable = torch.cat([torch.zeros(1, dtype=h.dtype, device=h.device), self.status_known])[status] > 0
        state = torch.where(readable, n_codes + status - 1, code)  # a known failure state reads its row after the codes
        by_status = self.feature_by_status > 0
        deviation = x[:, :-1] - torch.where(by_status, self.feature_median[state], self.feature_median[code])
        scale = torch.where(by_status, self.feature_scale[state], self.feature_scale[code])
        move_nats = torch.where(by_status, self.feature_move_nats[state], self.feature_move_nats[code])
        moved = torch.where(deviation.abs() > 1e-6, move_nats + self.size_shape * torch.log1p(deviation.abs() / scale),
                            torch.zeros_like(deviation))
        nats = torch.relu(torch.where(self.feature_timing > 0, deviation / scale, moved) - self.feature_log_count)
        groups = (nats.unsqueeze(2) * self.feature_groups.unsqueeze(0)).amax(dim=1)  # nodes x groups
        doubled = 1.0 + (x[:, :-1] * self.feature_doubles).amax(dim=1)
        began = 1.0 - failed * (callee_failed > 0).to(h.dtype)  # 0 where the error only passed on
        groups[:, self.error_group] = groups[:, self.error_group] * doubled * began
        error_sum = torch.zeros(num_graphs, dtype=h.dtype, device=h.device).index_add_(0, batch, groups[:, self.error_group])
        trace_groups = worst(groups, batch, num_graphs)
        trace_groups[:, self.error_group] = error_sum
        graph = pool(h, batch, num_graphs)
        graph_z = (torch.linalg.vector_norm(graph - self.graph_centre, dim=1) - self.graph_median) / self.graph_scale
        components = torch.cat([worst(embedding, batch, num_graphs).unsqueeze(1), trace_groups,
                                rarity(graph_z, no_count).unsqueeze(1)], dim=1)
        node = torch.maximum(self.component_weight[0] * embedding, (groups * self.component_weight[1:-1]).amax(dim=1))
        return node, graph, components

    def scores(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor, batch: torch.Tensor,
               num_graphs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each trace's score (higher = more anomalous), each node's score, and each trace's
        unweighted one-class components (what the score is made of: :meth:`parts`)."""
        node, graph, components = self.parts(x, edge_index, edge_attr, batch, num_graphs)
        one_class = (components * self.component_weight).amax(dim=1)
        if bool(self.use_pu[0] > 0):
            logit = self.pu_head(torch.cat([graph, torch.asinh(components)], dim=1)).squeeze(1)
            return one_class + self.pu_weight * (logit - self.pu_median) / self.pu_scale, node, components
        return one_class, node, components

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor, batch: torch.Tensor,
                num_graphs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each trace's score (higher = more anomalous) and each node's score."""
        score, node, _ = self.scores(x, edge_index, edge_attr, batch, num_graphs)
        return score, node


def failures(x: torch.Tensor, edge_index: torch.Tensor, error_column: int, depth_column: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per node, 1.0 where its span failed, and how many of its callees failed (edges run both
    ways; the callee is the deeper end)."""
    failed = (x[:, error_column] > 0).to(x.dtype)
    depth = x[:, depth_column]
    callee = (depth[edge_index[1]] > depth[edge_index[0]]).to(x.dtype)
    callee_failed = torch.zeros_like(failed).index_add_(0, edge_index[0], callee * failed[edge_index[1]])
    return failed, callee_failed


def failure_state(failed: torch.Tensor, callee_failed: torch.Tensor,
                  states: tuple[int, int, int] = (OK, FAILED, CALLEE_FAILED)) -> torch.Tensor:
    """Per node, :data:`~detectors.traces.ltg_one_class.FAILED` where its span failed, else
    ``CALLEE_FAILED`` where a callee failed, else ``OK`` (the rows a node's log inputs are read
    against, in training and in scoring alike; ``states`` carries the three codes into TorchScript)."""
    ok, failed_state, callee_state = states
    return torch.where(failed > 0, torch.full_like(failed, float(failed_state)),
                       torch.where(callee_failed > 0, torch.full_like(failed, float(callee_state)),
                                   torch.full_like(failed, float(ok)))).long()


def worst(values: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Each graph's largest node value (per column, for a nodes x columns ``values``)."""
    index = batch.view([-1] + [1] * (values.dim() - 1)).expand_as(values)
    return torch.full([num_graphs] + list(values.shape[1:]), -1e9, dtype=values.dtype, device=values.device).scatter_reduce(
        0, index, values, reduce="amax", include_self=True)


def pu_head_for(hidden: int, components: int) -> nn.Module:
    """The PU classifier over ``[graph embedding (2 x hidden), asinh of the one-class components]``."""
    return nn.Sequential(nn.Linear(2 * hidden + components, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def nn_pu_loss(logit_positive: torch.Tensor, logit_unlabelled: torch.Tensor, prior: float) -> torch.Tensor:
    """Non-negative PU risk (Kiryo et al., NeurIPS 2017) with the logistic loss.

    ``prior`` is the share of faulty traces among the unlabelled ones. The unlabelled traces' risk
    as negatives, less the positives' share of it, is clamped at zero, so a flexible head cannot
    drive it below what the unlabelled positives make impossible. The logistic loss, not the
    paper's sigmoid: with a small prior the unlabelled term first pushes every logit down, and a
    sigmoid loss saturates there (its gradient vanishes), leaving the positives below the rest.
    """
    positive_risk = prior * F.softplus(-logit_positive).mean()
    negative_risk = F.softplus(logit_unlabelled).mean() - prior * F.softplus(logit_positive).mean()
    return positive_risk + torch.clamp(negative_risk, min=0.0)
