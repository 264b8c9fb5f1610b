"""Anomalous traces from log-aware trace graphs, learned by contrast and, where operators confirmed
some faulty traces, by positive-unlabelled learning (plugin ``logtraceguard``).

After LogTraceGuard (log-aware trace graphs, contrastive learning at node, edge and graph level,
then a PU classifier):
- every trace becomes a graph of its calls carrying their spans' log events
  (:mod:`detectors.traces.ltg_graphs`);
- the encoder (:mod:`detectors.traces.ltg_model`) is trained without labels on two views of each
  batch, one with nodes dropped and one with edges dropped: InfoNCE pulls the same node, the same
  edge and the same graph together across the views and pushes the others apart (GraphCL, You et
  al., NeurIPS 2020; :mod:`detectors.traces.ltg_contrastive`);
- a trace scores by the rarest thing its nodes did, among their operations' training calls, in
  nats: a slow call, a changed structure, unusual log events, errors (one-class;
  :mod:`detectors.traces.ltg_one_class`); the embedding's and the graph's distances from the
  training ones are measured on the same scale and feed the PU head;
- given labels (``fit(bundle, labels=...)``: the ids of traces an operator confirmed as faulty, or
  ``"truth"`` for the traces of ``truth.json``'s fault windows that pass through the fault's
  service), a PU head learns from them and the rest, with the non-negative risk of Kiryo et al.
  (NeurIPS 2017); its logit, as a robust z-score, is added with weight ``pu_weight`` to the
  one-class score, so that labels raise the kinds they show and leave the others their one-class
  score.
Ablation switches: ``use_logs``, ``use_edges``, ``contrastive_levels``, ``score_features`` and
``pu``. The scorer compiles to TorchScript (:meth:`LogTraceGuardDetector.export`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from detectors.logs.templates import UNMATCHED, SavedMinerMixin, TemplateMiner
from detectors.robust import MAD_TO_SIGMA
from detectors.torch_model import (
    HeldOutCalibrationMixin,
    TorchNetworkMixin,
    reproducible_threads,
    torch_device,
)
from detectors.trace_sample import TraceSampleMixin
from detectors.traces.client_calls import fold_calls
from detectors.traces.graph_batch import gather_edges
from detectors.traces.ltg_contrastive import LEVELS, ContrastiveTraining
from detectors.traces.ltg_graphs import (
    CALL_COLUMNS,
    EDGE,
    LOG_COLUMNS,
    NUMERIC,
    LogTraceGraphs,
    build_log_trace_graphs,
    learn_call_baselines,
)
from detectors.traces.ltg_one_class import COMPONENTS, ERROR_GROUP, GROUPS, SIZE_SHAPE, one_class_statistics
from detectors.traces.teg_graphs import HASH_DIM
from melt.core.bundle import MeltBundle
from melt.core.detector import Detector, empty_scores
from melt.core.errors import PluginError

INPUT_FLOOR = 0.05  # least spread an input is standardised by (a constant input stays near 0)
ERROR_COLUMN, DEPTH_COLUMN = NUMERIC.index("error"), NUMERIC.index("log_depth")  # where errors began (the scorer)


def _levels(spec: str) -> tuple[str, ...]:
    levels = tuple(part.strip() for part in spec.split(",") if part.strip())
    wrong = [level for level in levels if level not in LEVELS]
    if wrong:
        raise PluginError(f"logtraceguard: contrastive_levels takes any of {', '.join(LEVELS)}, got {', '.join(wrong)}")
    return levels


def truth_traces(bundle: MeltBundle) -> np.ndarray:
    """Ids of the traces that start inside a fault window of ``truth.json`` and pass through its
    root-cause service: the faulty traces an operator would confirm."""
    spans = bundle.traces
    faults = (bundle.truth or {}).get("faults", [])
    if spans is None or not faults:
        return np.zeros(0, dtype=object)
    start = pd.to_datetime(spans["start_time"], utc=True).groupby(spans["trace_id"].astype(str)).transform("min")
    chosen = np.zeros(len(spans), dtype=bool)
    for fault in faults:
        inside = (start >= pd.Timestamp(fault["start"])) & (start < pd.Timestamp(fault["end"]))
        chosen |= (inside & (spans["service_name"].astype(str) == str(fault.get("root_cause_service")))).to_numpy()
    return pd.unique(spans["trace_id"].astype(str).to_numpy()[chosen])


class LogTraceGuardDetector(TraceSampleMixin, HeldOutCalibrationMixin, TorchNetworkMixin, SavedMinerMixin, Detector):
    """Contrastive log-aware graph encoder with one-class or PU scoring.

    Args:
        hidden, embed_dim, layers: node embedding size, operation embedding size, GINE layers.
        projection, temperature: contrastive heads' output size and InfoNCE temperature.
        drop_node, drop_edge: share of nodes (never a trace's first) and of edges each view drops.
        contrastive_levels: comma-separated levels trained: any of node, edge, graph ("" = none:
            the encoder keeps its random weights, an ablation).
        use_logs: node features from the span's log events; use_edges: edge features of the calls.
        score_features: a node scores by the rarity of its inputs among its operation's training
            calls (:mod:`detectors.traces.ltg_one_class`); off, by its embedding's distance and the
            graph's only (an ablation).
        pu: learn a PU head when labels are given; pu_prior: share of faulty traces among the
            unlabelled ones; pu_epochs: full-batch steps of the head; pu_weight: weight of the
            head's robust z-score added to the one-class score.
        epochs, patience, batch_traces, learning_rate: training, with early stopping on the
            held-out traces' contrastive loss.
        max_train_traces: traces sampled for training (:mod:`detectors.trace_sample`).
        validation_fraction: trailing share of training traces held out (early stopping, calibration).
        top_nodes: worst nodes listed in the evidence.
        device: "auto" (GPU if present), "cpu" or "cuda".
        seed: seed of initialisation, augmentation, sampling and shuffling.
    """

    name = "logtraceguard"
    signal = "traces"
    partition = "trace"
    reads = ("logs",)

    def __init__(self, hidden: int = 32, embed_dim: int = 8, layers: int = 2, projection: int = 32,
                 temperature: float = 0.2, drop_node: float = 0.2, drop_edge: float = 0.2,
                 contrastive_levels: str = "node,edge,graph", use_logs: bool = True, use_edges: bool = True,
                 score_features: bool = True, pu: bool = True, pu_prior: float = 0.05, pu_epochs: int = 300,
                 pu_weight: float = 0.2, epochs: int = 20, patience: int = 4,
                 batch_traces: int = 128, learning_rate: float = 3e-3, max_train_traces: int = 2000,
                 validation_fraction: float = 0.2, top_nodes: int = 3, device: str = "auto", seed: int = 0) -> None:
        self.hidden = hidden
        self.embed_dim = embed_dim
        self.layers = layers
        self.projection = projection
        self.temperature = temperature
        self.drop_node = drop_node
        self.drop_edge = drop_edge
        self.contrastive_levels = contrastive_levels
        self.use_logs = use_logs
        self.use_edges = use_edges
        self.score_features = score_features
        self.pu = pu
        self.pu_prior = pu_prior
        self.pu_weight = pu_weight
        self.pu_epochs = pu_epochs
        self.epochs = epochs
        self.patience = patience
        self.batch_traces = batch_traces
        self.learning_rate = learning_rate
        self.max_train_traces = max_train_traces
        self.validation_fraction = validation_fraction
        self.top_nodes = top_nodes
        self.device = device
        self.seed = seed

    # ------------------------------------------------------------------ graphs
    def _graphs(self, bundle: MeltBundle, folded: tuple | None = None) -> LogTraceGraphs:
        """The graphs of the bundle's traces, with their log lines if used (``folded``: their
        :func:`fold_calls`, when already at hand)."""
        tree, gap, failed = fold_calls(self.require(bundle)) if folded is None else folded
        logs, keys, unseen = self._log_events(bundle)
        graphs = build_log_trace_graphs(tree, gap, failed, self.baselines_, logs, keys, unseen)
        if not self.use_logs:
            graphs.x[:, LOG_COLUMNS] = 0.0
            graphs.x[:, len(NUMERIC):len(NUMERIC) + HASH_DIM] = 0.0
        if not self.use_edges:
            graphs.edge_attr[:] = 0.0
            graphs.x[:, CALL_COLUMNS] = 0.0
        return graphs

    def _log_events(self, bundle: MeltBundle) -> tuple[pd.DataFrame | None, np.ndarray | None, np.ndarray | None]:
        """Log lines tied to a span, their template texts (values' kinds kept) and whether training saw none."""
        logs = bundle.logs
        if not self.use_logs or getattr(self, "miner_", None) is None or logs is None \
                or not {"trace_id", "span_id"} <= set(logs.columns):
            return None, None, None
        logs = logs[logs["trace_id"].notna() & logs["span_id"].notna()]
        if logs.empty:
            return None, None, None
        ids, masked = self.miner_.match(logs["message"])
        unseen = ids == UNMATCHED
        keys = np.where(unseen, masked, pd.Series(ids).map(self.miner_.marked_templates()).to_numpy(dtype=object))
        return logs, keys, unseen

    # ------------------------------------------------------------------ network
    def _input_size(self) -> int:
        return len(self.baselines_.operations)

    def _encoder(self, n_operations: int):
        import torch

        from detectors.traces.ltg_model import LogTraceEncoder

        torch.manual_seed(self.seed)
        return LogTraceEncoder(len(NUMERIC) + HASH_DIM, len(EDGE), n_operations, self.embed_dim, self.hidden, self.layers)

    def _build(self, n_operations: int):
        """An untrained scorer of the fitted shape (its weights and statistics come from ``network.pt``)."""
        import torch

        from detectors.traces.ltg_model import LogTraceGuardScorer, pu_head_for

        codes, features = n_operations + 1, len(NUMERIC) + HASH_DIM
        rows = codes + 2  # the operation codes, then the failed and callee-failed states
        return LogTraceGuardScorer(
            self._encoder(n_operations), torch.zeros(codes, self.hidden), torch.zeros(codes), torch.ones(codes),
            torch.zeros(rows, features), torch.ones(rows, features), torch.zeros(rows, features),
            torch.zeros(features), torch.zeros(features), torch.zeros(2), torch.zeros(features),
            torch.zeros(features, len(GROUPS)), torch.zeros(features),
            torch.zeros(2 * self.hidden), torch.zeros(1), torch.ones(1), torch.zeros(len(COMPONENTS)), SIZE_SHAPE,
            ERROR_GROUP, ERROR_COLUMN, DEPTH_COLUMN, pu_head_for(self.hidden, len(COMPONENTS)) if self.pu_fitted_ else None)

    def _tensors(self, graphs: LogTraceGraphs, traces: np.ndarray, dtype: Any = None) -> tuple[Any, ...]:
        import torch

        x, edges, cols, batch = gather_edges(graphs, traces)
        dtype = dtype or torch.float32
        return (torch.from_numpy(x).to(dtype), torch.from_numpy(edges), torch.from_numpy(graphs.edge_attr[cols]).to(dtype),
                torch.from_numpy(batch))

    # ------------------------------------------------------------------ contract
    def fit(self, bundle: MeltBundle, labels: Iterable[str] | str | None = None) -> Self:
        """Learn from ``bundle``; ``labels``: ids of traces known to be faulty, or ``"truth"``."""
        if labels is None:
            return self.fit_in_rounds(bundle)
        self._labels = labels
        try:
            return self.fit_in_rounds(bundle)
        finally:
            del self._labels

    def labelled_traces(self, bundle: MeltBundle) -> np.ndarray:
        return self._positive_ids(bundle, getattr(self, "_labels", None))

    def fit_sample(self, sample: MeltBundle) -> None:
        """Learn from the sampled and the labelled traces (:mod:`detectors.trace_sample`)."""
        import torch

        levels = _levels(self.contrastive_levels)
        folded = fold_calls(self.require(sample))  # per trace, so the normal traces' rows fold as they would alone
        normal = ~self.sample_labelled(folded[0]["trace_id"].to_numpy())
        self.baselines_ = learn_call_baselines(folded[0][normal], folded[1][normal])
        self.miner_ = None
        logs = sample.logs
        if self.use_logs and logs is not None and {"trace_id", "span_id"} <= set(logs.columns):
            own = logs[logs["trace_id"].notna().to_numpy() & ~self.sample_labelled(logs["trace_id"].to_numpy())]
            if len(own):
                self.miner_ = TemplateMiner()
                self.miner_.fit(own["message"])
        graphs = self._graphs(sample, folded)
        positive = self.sample_labelled(graphs.trace_id)
        rng = np.random.default_rng(self.seed)
        unlabelled = np.flatnonzero(~positive)
        train, validation = self.sample_split(graphs.trace_id)

        device = torch_device(self.device)
        encoder = self._encoder(len(self.baselines_.operations))
        features = gather_edges(graphs, train)[0][:, :-1]
        encoder.input_mean.copy_(torch.from_numpy(features.mean(axis=0)))
        encoder.input_scale.copy_(torch.from_numpy(np.maximum(features.std(axis=0), INPUT_FLOOR)))
        encoder = encoder.to(device)
        self.history_: list[tuple[float, float]] = []
        if levels:
            training = ContrastiveTraining(levels, self.hidden, self.projection, self.temperature, self.drop_node,
                                           self.drop_edge, self.epochs, self.patience, self.batch_traces,
                                           self.learning_rate, self.seed)
            self.history_ = training.fit(encoder, lambda chosen: self._tensors(graphs, chosen), train, validation, rng,
                                         device)
        encoder = encoder.cpu().eval()
        self.pu_fitted_ = False
        scorer = self._one_class_scorer(encoder, graphs, train)
        if self.pu and positive.any():
            self._train_pu(scorer, graphs, np.flatnonzero(positive), unlabelled)
        self.network_ = scorer.eval()

    def fit_calibrated(self, bundle: MeltBundle, labels: Iterable[str] | str | None = None) -> Self:
        """:meth:`Detector.fit_calibrated` with labels; labelled traces stay out of the calibration."""
        self._labels = labels
        try:
            return super().fit_calibrated(bundle)
        finally:
            del self._labels

    def calibration_scores(self, bundle: MeltBundle) -> np.ndarray:
        positives = self._positive_ids(bundle, getattr(self, "_labels", None))
        if len(positives):
            spans = self.require(bundle)
            bundle = MeltBundle(traces=spans[~spans["trace_id"].astype(str).isin(positives).to_numpy()],
                                logs=bundle.logs, validate=False)
        return super().calibration_scores(bundle)

    @staticmethod
    def _positive_ids(bundle: MeltBundle, labels: Iterable[str] | str | None) -> np.ndarray:
        if labels is None:
            return np.zeros(0, dtype=object)
        if isinstance(labels, str):
            if labels != "truth":
                raise PluginError(f"logtraceguard: labels must be trace ids or 'truth', got {labels!r}")
            return truth_traces(bundle)
        return np.asarray([str(label) for label in labels], dtype=object)

    def _embed(self, encoder, graphs: LogTraceGraphs, traces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Node embeddings and pooled graph embeddings of ``traces``, in float64 (batch-size independent)."""
        import torch

        from detectors.traces.ltg_model import pool

        encoder = copy.deepcopy(encoder).double().eval()
        nodes, pooled = [], []
        with torch.no_grad():
            for start in range(0, traces.size, 512):
                chosen = traces[start:start + 512]
                x, edges, attr, batch = self._tensors(graphs, chosen, torch.float64)
                h = encoder(x, edges, attr)
                nodes.append(h.numpy())
                pooled.append(pool(h, batch, chosen.size).numpy())
        return np.concatenate(nodes), np.concatenate(pooled)

    def _one_class_scorer(self, encoder, graphs: LogTraceGraphs, train: np.ndarray):
        """The scorer with what the training traces say of normal (:mod:`detectors.traces.ltg_one_class`)."""
        import torch

        from detectors.traces.ltg_model import LogTraceGuardScorer, failure_state, failures

        nodes, pooled = self._embed(encoder, graphs, train)
        x, edges = gather_edges(graphs, train)[:2]
        status = failure_state(*failures(torch.from_numpy(x), torch.from_numpy(edges), ERROR_COLUMN, DEPTH_COLUMN)).numpy()
        stats = one_class_statistics(nodes, pooled, x, len(self.baselines_.operations) + 1, self.score_features, status)
        as_tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
        return LogTraceGuardScorer(encoder, as_tensor(stats.node_centre), as_tensor(stats.node_median),
                                   as_tensor(stats.node_scale), as_tensor(stats.feature_median),
                                   as_tensor(stats.feature_scale), as_tensor(stats.feature_move_nats),
                                   as_tensor(stats.feature_timing), as_tensor(stats.feature_by_status),
                                   as_tensor(stats.status_known), as_tensor(stats.feature_log_count),
                                   as_tensor(stats.feature_groups), as_tensor(stats.feature_doubles),
                                   as_tensor(stats.graph_centre), as_tensor([stats.graph_median]),
                                   as_tensor([stats.graph_scale]), as_tensor(stats.component_weight), SIZE_SHAPE,
                                   ERROR_GROUP, ERROR_COLUMN, DEPTH_COLUMN)

    def _features(self, scorer, graphs: LogTraceGraphs, traces: np.ndarray) -> Any:
        """Per trace of ``traces``: its graph embedding and its one-class components (float32)."""
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, traces.size, 512):
                chosen = traces[start:start + 512]
                x, edges, attr, batch = self._tensors(graphs, chosen)
                _, graph, components = scorer.parts(x, edges, attr, batch, chosen.size)
                out.append(torch.cat([graph, components], dim=1))
        return torch.cat(out) if out else torch.zeros(0, 2 * self.hidden + len(COMPONENTS))

    def _train_pu(self, scorer, graphs: LogTraceGraphs, positive: np.ndarray, unlabelled: np.ndarray) -> None:
        """Fit the PU head on the frozen encoder's graph features of labelled and unlabelled traces."""
        import torch

        from detectors.traces.ltg_model import nn_pu_loss, pu_head_for

        torch.manual_seed(self.seed)
        head = pu_head_for(self.hidden, len(COMPONENTS))
        def features(traces: np.ndarray) -> Any:
            both = self._features(scorer, graphs, traces)
            return torch.cat([both[:, :2 * self.hidden], torch.asinh(both[:, 2 * self.hidden:])], dim=1)

        positives, unlabelled_features = features(positive), features(unlabelled)
        optimiser = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
        with reproducible_threads(torch.device("cpu")):
            for _ in range(self.pu_epochs):
                optimiser.zero_grad()
                loss = nn_pu_loss(head(positives).squeeze(1), head(unlabelled_features).squeeze(1), self.pu_prior)
                loss.backward()
                optimiser.step()
        with torch.no_grad():
            logit = head(unlabelled_features).squeeze(1).numpy()
        median = float(np.median(logit))
        scorer.pu_median.fill_(median)
        scorer.pu_scale.fill_(max(MAD_TO_SIGMA * float(np.median(np.abs(logit - median))), 1e-6))
        scorer.pu_weight.fill_(self.pu_weight)
        scorer.pu_head = head
        scorer.use_pu.fill_(1.0)
        self.pu_fitted_ = True

    def trace_scores(self, bundle: MeltBundle, aggregation: str | None = None,
                     batch_size: int | None = None) -> tuple[pd.DataFrame, LogTraceGraphs, np.ndarray]:
        """One row per trace, the graphs and node scores. A row holds trace_id, start_time, score,
        span_count, service (of the worst node), ``reason`` (the one-class component that set the
        score: timing, structure, logs or errors, as :data:`COMPONENTS` names them) and each
        component's rarity in nats (``timing_nats``, ...), so that a user sees why a trace scored.

        ``aggregation`` is accepted for ``melt traces`` and ignored: a trace scores by its worst
        node and its graph, or by the PU head.
        """
        import torch

        if getattr(self, "network_", None) is None:
            self.check_is_fitted()
        graphs = self._graphs(bundle)
        scorer = copy.deepcopy(self.network_).double().eval()
        size = batch_size or 512
        scores, node_z, parts = [], [], []
        with torch.no_grad():
            for start in range(0, graphs.n_traces, size):
                chosen = np.arange(start, min(start + size, graphs.n_traces))
                trace_score, z, components = scorer.scores(*self._tensors(graphs, chosen, torch.float64), chosen.size)
                scores.append(trace_score.numpy())
                node_z.append(z.numpy())
                parts.append(components.numpy())
        score = np.concatenate(scores) if scores else np.zeros(0)
        nodes = np.concatenate(node_z) if node_z else np.zeros(0)
        components = np.concatenate(parts) if parts else np.zeros((0, len(COMPONENTS)))
        worst = pd.Series(nodes).groupby(graphs.node_trace).idxmax().to_numpy() if nodes.size else np.zeros(0, np.int64)
        reason = np.asarray(COMPONENTS)[(components * scorer.component_weight.numpy()).argmax(axis=1)]
        table = pd.DataFrame({"trace_id": graphs.trace_id.astype(str), "start_time": graphs.trace_start, "score": score,
                              "span_count": np.diff(graphs.trace_ptr), "service": graphs.service[worst].astype(str),
                              "reason": reason.astype(str),
                              **{f"{name}_nats": components[:, i] for i, name in enumerate(COMPONENTS)}})
        return table, graphs, nodes

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        if self.require(bundle).empty:
            return empty_scores()
        table, graphs, node_z = self.trace_scores(bundle)
        order = np.lexsort((-node_z, graphs.node_trace))
        rank = np.arange(order.size) - graphs.trace_ptr[graphs.node_trace[order]]
        top = order[rank < self.top_nodes]
        nodes = pd.DataFrame({"service": graphs.service[top].astype(str),
                              "operation": pd.Series(graphs.operation[top]).astype(str).str.slice(0, 200).to_numpy(),
                              "score": np.round(node_z[top].astype(np.float64), 3)})
        worst_nodes = pd.Series(nodes.to_dict("records")).groupby(graphs.node_trace[top]).agg(list)
        first = pd.Series(top).groupby(graphs.node_trace[top]).first().reindex(np.arange(graphs.n_traces)).to_numpy()
        evidence = pd.DataFrame({
            "value": np.round(table["score"].to_numpy(), 6), "expected_range": [[None, None]] * len(table),
            "anomaly_type": "trace_anomaly", "trace_id": table["trace_id"].to_numpy(),
            "worst_nodes": worst_nodes.reindex(np.arange(graphs.n_traces)).to_numpy(),
            "reason": table["reason"].to_numpy(),
            "rarity_nats": table[[f"{name}_nats" for name in COMPONENTS]].round(3).rename(
                columns=lambda column: column.removesuffix("_nats")).to_dict("records"),
        }).to_dict("records")
        return pd.DataFrame({
            "timestamp": table["start_time"].to_numpy(), "service": table["service"].to_numpy(), "detector": self.name,
            "entity": pd.Series(graphs.operation[first]).astype(str).str.slice(0, 200).to_numpy(),
            "score": table["score"].to_numpy(), "evidence": evidence,
        })

    # ------------------------------------------------------------------ export
    def export(self, path: str | Path) -> Path:
        """Write the scorer as TorchScript: ``torch.jit.load(path)(x, edge_index, edge_attr, batch,
        num_graphs)`` gives (trace scores, node z-scores) with no melt installed (float64 inputs;
        docs/traces.md gives the layout)."""
        import torch

        self.check_is_fitted()
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        module = copy.deepcopy(self.network_).double().eval()
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        with warnings.catch_warnings():  # torch 2.x marks torch.jit deprecated; TorchScript is the asked-for format
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.script(module).save(str(target))
        return target


__all__ = ["LogTraceGuardDetector", "truth_traces", "LEVELS"]
