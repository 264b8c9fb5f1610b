"""Trace anomalies by graph reconstruction: a GAT graph autoencoder over span graphs (plugin ``gat_gae``).

The seed trace-anomaly tools' method: every trace becomes a graph of its spans
(:mod:`detectors.traces.gat_graphs`); a GAT encoder maps spans to latents; a feature decoder and an
inner-product structure decoder reconstruct them (:mod:`detectors.traces.gat_gae_model`). Training
minimises ``loss_alpha * structure_loss + (1 - loss_alpha) * feature_loss`` on normal traces, with
negative sampling inside each trace for the structure term; a span's reconstruction error is its
anomaly score, and a trace's is the ``max``, ``mean`` or ``percentile_95`` of its spans'. The seeds
train one graph per step; here every step is a block-diagonal batch of ``batch_size`` traces, and
scoring is batched the same way. The trace is attributed to the service whose spans reconstruct
worst.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from detectors.torch_model import (
    EarlyStopping,
    HeldOutCalibrationMixin,
    TorchNetworkMixin,
    reproducible_threads,
    torch_device,
)
from detectors.trace_sample import TraceSampleMixin
from detectors.traces.client_calls import server_tree
from detectors.traces.gat_graphs import (
    NUMERIC,
    SpanGraphs,
    build_span_graphs,
    learn_baselines,
    vocabulary,
)
from detectors.traces.graph_batch import gather
from melt.core.bundle import MeltBundle
from melt.core.detector import Detector, empty_scores
from melt.core.errors import PluginError

AGGREGATIONS = ("max", "mean", "percentile_95")


def negative_pairs(edges: np.ndarray, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One negative pair per edge: its source with a random other span of the same trace.

    Vectorised and seeded (PyG's samplers draw from Python's global ``random``, which would make
    training depend on state outside the detector). A drawn pair is occasionally a real call; the
    structure loss tolerates that noise, as negative sampling usually does.
    """
    counts = np.bincount(batch)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    source = edges[0]
    graph = batch[source]
    size = counts[graph]
    offset = (source - starts[graph] + 1 + (rng.random(source.size) * np.maximum(size - 1, 1)).astype(np.int64)) % size
    return np.stack([source, starts[graph] + offset])


class GATGraphAutoencoderDetector(TraceSampleMixin, HeldOutCalibrationMixin, TorchNetworkMixin, Detector):
    """GAT graph autoencoder with dual (feature + structure) reconstruction loss.

    Args:
        latent_dim, hidden_dim, gat_heads, embed_dim: network sizes.
        epochs, learning_rate, batch_size: training; ``batch_size`` traces per step.
        loss_alpha: weight of the structure loss (``1 - loss_alpha`` weighs the feature loss).
        patience: epochs without validation gain before early stopping.
        lr_factor, lr_patience: the learning-rate schedule (reduce on plateau of the validation loss).
        aggregation: span errors to a trace score: max, mean or percentile_95.
        max_train_traces: traces sampled for training (:mod:`detectors.trace_sample`).
        validation_fraction: trailing share of training traces held out (early stopping, calibration).
        unknown_rate: share of training spans whose service/operation code is replaced by the
            unknown bucket, so that bucket learns what "never seen" looks like.
        top_spans: worst spans listed in the evidence.
        device: "auto" (GPU if present), "cpu" or "cuda".
        seed: seed of initialisation, sampling and shuffling.
    """

    name = "gat_gae"
    choices = {"aggregation": AGGREGATIONS}
    signal = "traces"
    partition = "trace"

    def __init__(self, latent_dim: int = 16, hidden_dim: int = 32, gat_heads: int = 4, embed_dim: int = 8,
                 epochs: int = 30, learning_rate: float = 3e-3, batch_size: int = 128, loss_alpha: float = 0.5,
                 patience: int = 5, lr_factor: float = 0.5, lr_patience: int = 2, aggregation: str = "max",
                 max_train_traces: int = 20000, validation_fraction: float = 0.2, unknown_rate: float = 0.02,
                 top_spans: int = 3, device: str = "auto", seed: int = 0) -> None:
        self.latent_dim = latent_dim
        self.hidden_dim = hidden_dim
        self.gat_heads = gat_heads
        self.embed_dim = embed_dim
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.loss_alpha = loss_alpha
        self.patience = patience
        self.lr_factor = lr_factor
        self.lr_patience = lr_patience
        self.aggregation = aggregation
        self.max_train_traces = max_train_traces
        self.validation_fraction = validation_fraction
        self.unknown_rate = unknown_rate
        self.top_spans = top_spans
        self.device = device
        self.seed = seed

    # ------------------------------------------------------------------ network
    def _input_size(self) -> int:
        return len(NUMERIC)

    def _build(self, numeric_dim: int):
        import torch

        from detectors.traces.gat_gae_model import GATGraphAutoencoder

        torch.manual_seed(self.seed)
        return GATGraphAutoencoder(numeric_dim, len(self.services_), len(self.operations_), self.embed_dim,
                                   self.hidden_dim, self.latent_dim, self.gat_heads)

    def _spans(self, bundle: MeltBundle) -> pd.DataFrame:
        """The bundle's spans as a trace of server spans draws them: a call is one node (its server span)."""
        return server_tree(self.require(bundle))

    def _raw_graphs(self, spans: pd.DataFrame) -> SpanGraphs:
        """Span graphs with the learned vocabularies and baselines, numeric features not yet standardised."""
        return build_span_graphs(spans, pd.Index(self.services_, dtype=object), pd.Index(self.operations_, dtype=object),
                                 self.baselines_)

    def _graphs(self, spans: pd.DataFrame) -> SpanGraphs:
        graphs = self._raw_graphs(spans)
        n = len(NUMERIC)
        graphs.x[:, :n] = (graphs.x[:, :n] - self.mean_) / self.std_
        return graphs

    def _batch(self, graphs: SpanGraphs, traces: np.ndarray, device: Any) -> tuple[Any, Any]:
        import torch

        x, edges, _ = gather(graphs, traces)
        return torch.from_numpy(x).to(device), torch.from_numpy(edges).to(device)

    def _span_errors(self, network: Any, x: Any, edges: Any) -> tuple[Any, Any]:
        """Per-span feature error and structure error (mean -log sigmoid over the span's own calls)."""
        import torch
        import torch.nn.functional as F

        n = len(NUMERIC)
        z, numeric, service_logits, operation_logits = network(x, edges)
        codes = x[:, n:].long()
        scale = torch.as_tensor(self.residual_scale_, device=x.device)
        feature = (((numeric - x[:, :n]) / scale) ** 2).mean(dim=1) + 0.5 * (
            F.cross_entropy(service_logits, codes[:, 0], reduction="none")
            + F.cross_entropy(operation_logits, codes[:, 1], reduction="none"))
        edge_loss = F.softplus(-network.edge_logits(z, edges))
        total = torch.zeros(x.shape[0], device=x.device).index_add_(0, edges[0], edge_loss)
        degree = torch.zeros(x.shape[0], device=x.device).index_add_(0, edges[0], torch.ones_like(edge_loss))
        return feature, total / degree.clamp(min=1), z

    def span_scores(self, graphs: SpanGraphs, traces: np.ndarray | None = None, batch_size: int | None = None) -> np.ndarray:
        """Reconstruction error of every span of ``traces`` (all by default), ``batch_size`` traces per pass."""
        import torch

        traces = np.arange(graphs.n_traces) if traces is None else traces
        size = batch_size or self.batch_size
        network = self.network_
        network.eval()
        out = []
        with torch.no_grad():
            for start in range(0, traces.size, size):
                x, edges = self._batch(graphs, traces[start:start + size], torch.device("cpu"))
                feature, structure, _ = self._span_errors(network, x, edges)
                out.append((self.loss_alpha * structure + (1 - self.loss_alpha) * feature).numpy())
        return np.concatenate(out) if out else np.zeros(0)

    # ------------------------------------------------------------------ contract
    def fit_sample(self, sample: MeltBundle) -> None:
        """Learn from the sampled traces (:mod:`detectors.trace_sample`): vocabularies, baselines, the network."""
        import torch
        from tqdm.auto import tqdm

        if self.aggregation not in AGGREGATIONS:
            raise PluginError(f"gat_gae: aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        spans = self._spans(sample)
        self.services_ = list(vocabulary(spans["service_name"]))
        self.operations_ = list(vocabulary(spans["service_name"].astype(str) + " " + spans["span_name"].astype(str)))
        self.baselines_ = learn_baselines(spans)
        self.residual_scale_ = np.ones(len(NUMERIC), dtype=np.float32)
        graphs = self._raw_graphs(spans)
        numeric = graphs.x[:, : len(NUMERIC)]
        self.mean_ = numeric.mean(axis=0).astype(np.float32)
        self.std_ = np.maximum(numeric.std(axis=0), 0.05).astype(np.float32)
        graphs.x[:, : len(NUMERIC)] = (numeric - self.mean_) / self.std_
        spans_frame = pd.DataFrame({"operation": graphs.operation, "duration": graphs.duration})
        self.expected_ = spans_frame.groupby("operation")["duration"].quantile([0.05, 0.5, 0.95]).unstack()

        rng = np.random.default_rng(self.seed)
        train, validation = self.sample_split(graphs.trace_id)

        device = torch_device(self.device)
        network = self._build(len(NUMERIC)).to(device)
        torch.manual_seed(self.seed)
        optimiser = torch.optim.Adam(network.parameters(), lr=self.learning_rate)
        schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, factor=self.lr_factor, patience=self.lr_patience)
        stopper = EarlyStopping(self.patience, min_gain=0.005)
        self.history_: list[tuple[float, float, float]] = []
        n = len(NUMERIC)
        with reproducible_threads(device):
            epochs = tqdm(range(self.epochs), desc="gat_gae", unit="epoch", disable=None, leave=False)
            for _ in epochs:
                network.train()
                shuffled = rng.permutation(train)
                total = 0.0
                for start in range(0, shuffled.size, self.batch_size):
                    chosen = np.sort(shuffled[start:start + self.batch_size])
                    x, edges, batch = gather(graphs, chosen)
                    x = x.copy()
                    unknown = rng.random((x.shape[0], 2)) < self.unknown_rate
                    x[:, n:n + 2][unknown] = 0.0
                    x, edges = torch.from_numpy(x).to(device), torch.from_numpy(edges).to(device)
                    batch = torch.from_numpy(batch).to(device)
                    optimiser.zero_grad()
                    feature, _, z = self._span_errors(network, x, edges)
                    loss = (1 - self.loss_alpha) * feature.mean()
                    if edges.shape[1]:
                        negative = torch.from_numpy(negative_pairs(edges.cpu().numpy(), batch.cpu().numpy(), rng)).to(device)
                        positive_loss = torch.nn.functional.softplus(-network.edge_logits(z, edges)).mean()
                        negative_loss = torch.nn.functional.softplus(network.edge_logits(z, negative)).mean() \
                            if negative.shape[1] else torch.zeros((), device=device)
                        loss = loss + self.loss_alpha * (positive_loss + negative_loss)
                    loss.backward()
                    optimiser.step()
                    total += float(loss.detach()) * chosen.size
                self.network_ = network.cpu()
                val = float(self.span_scores(graphs, validation).mean())
                network.to(device)
                schedule.step(val)
                self.history_.append((total / max(train.size, 1), val, optimiser.param_groups[0]["lr"]))
                epochs.set_postfix(train=f"{self.history_[-1][0]:.3f}", val=f"{val:.3f}")
                if stopper.should_stop(val, network):
                    break
        stopper.restore(network)
        self.network_ = network.cpu()
        self.residual_scale_ = self._residual_scale(graphs, validation)

    def _residual_scale(self, graphs: SpanGraphs, traces: np.ndarray) -> np.ndarray:
        """Per-feature spread of the reconstruction residual on held-out normal spans.

        Span errors divide each feature's residual by it, so a feature that normal spans
        reconstruct closely (a span's duration against its operation's) weighs as much as a noisy
        one instead of drowning in the mean over all features.
        """
        import torch

        n = len(NUMERIC)
        residuals = []
        with torch.no_grad():
            for start in range(0, traces.size, self.batch_size):
                x, edges = self._batch(graphs, traces[start:start + self.batch_size], torch.device("cpu"))
                residuals.append((self.network_(x, edges)[1] - x[:, :n]).numpy())
        spread = np.sqrt(np.mean(np.concatenate(residuals) ** 2, axis=0)) if residuals else np.ones(n)
        return np.maximum(spread, 0.05).astype(np.float32)

    def trace_scores(self, bundle: MeltBundle, aggregation: str | None = None,
                     batch_size: int | None = None) -> tuple[pd.DataFrame, SpanGraphs, np.ndarray]:
        """One row per trace (trace_id, start, score, service, span_count), the graphs and the span errors."""
        if getattr(self, "network_", None) is None:
            self.check_is_fitted()
        how = aggregation or self.aggregation
        if how not in AGGREGATIONS:
            raise PluginError(f"gat_gae: aggregation must be one of {', '.join(AGGREGATIONS)}, got {how!r}")
        graphs = self._graphs(self._spans(bundle))
        errors = self.span_scores(graphs, batch_size=batch_size)
        starts, counts = graphs.trace_ptr[:-1], np.diff(graphs.trace_ptr)
        if how == "max":
            score = np.maximum.reduceat(errors, starts)
        elif how == "mean":
            score = np.add.reduceat(errors, starts) / counts
        else:
            score = pd.Series(errors).groupby(graphs.node_trace).quantile(0.95).to_numpy()
        by_service = pd.DataFrame({"trace": graphs.node_trace, "service": graphs.service, "error": errors})
        worst_service = by_service.groupby(["trace", "service"], sort=False)["error"].mean()
        worst_service = worst_service.loc[worst_service.groupby(level="trace").idxmax()].reset_index(level="service")
        table = pd.DataFrame({"trace_id": graphs.trace_id.astype(str), "start_time": graphs.trace_start,
                              "score": score.astype(np.float64), "span_count": counts,
                              "service": worst_service["service"].reindex(np.arange(graphs.n_traces)).to_numpy()})
        return table, graphs, errors

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        spans = self._spans(bundle)
        if spans.empty:
            return empty_scores()
        table, graphs, errors = self.trace_scores(bundle)
        order = np.lexsort((-errors, graphs.node_trace))
        rank = np.arange(order.size) - graphs.trace_ptr[graphs.node_trace[order]]
        top = order[rank < self.top_spans]
        expected = self.expected_.reindex(pd.Index(graphs.operation[top], dtype=object))
        worst = pd.DataFrame({
            "span_id": graphs.span_id[top], "service": graphs.service[top],
            "operation": pd.Series(graphs.operation[top]).str.slice(0, 200).to_numpy(),
            "score": np.round(errors[top].astype(np.float64), 4), "duration_ms": np.round(graphs.duration[top], 3),
            "expected_ms": [None if np.isnan(lo) else [round(float(lo), 3), round(float(hi), 3)]
                            for lo, hi in zip(expected[0.05].to_numpy(), expected[0.95].to_numpy(), strict=True)],
        })
        worst_spans = pd.Series(worst.to_dict("records")).groupby(graphs.node_trace[top]).agg(list)
        first = pd.Series(top).groupby(graphs.node_trace[top]).first()
        evidence = pd.DataFrame({
            "value": np.round(table["score"].to_numpy(), 6), "expected_range": [[0.0, None]] * len(table),
            "anomaly_type": "trace_reconstruction", "trace_id": table["trace_id"].to_numpy(),
            "worst_spans": worst_spans.reindex(np.arange(len(table))).to_numpy(),
        }).to_dict("records")
        return pd.DataFrame({
            "timestamp": table["start_time"].to_numpy(), "service": table["service"].astype(str).to_numpy(),
            "detector": self.name,
            "entity": pd.Series(graphs.operation[first.reindex(np.arange(len(table))).to_numpy()]).str.slice(0, 200).to_numpy(),
            "score": table["score"].to_numpy(), "evidence": evidence,
        })


__all__ = ["GATGraphAutoencoderDetector", "AGGREGATIONS", "negative_pairs"]
