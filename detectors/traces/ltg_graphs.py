"""Log-aware span graphs for LogTraceGuard: one graph per trace, its calls as nodes carrying the log
events their spans wrote, and the calls between them as edges carrying what the client side saw.

Nodes are the spans of the server tree (:func:`detectors.traces.client_calls.fold_calls`: a client
span and the server span below it are one call). Per node: the log duration and the log self time
(duration less its children's) as robust z-scores against the same operation in training (log, not
log1p: a 5x slow-down of a 0.5 ms span is as far in log as one of a 50 ms span, where log1p shrinks
it to a third), its own error status, the shape features of :mod:`detectors.traces.gat_graphs`
(children and trace span count against their training medians, usual calls not made), its depth,
and from its log lines the counts of lines, error lines, warnings and lines no training template
matched, a hashed bag of their templates (the values' kinds kept as tokens, as
:mod:`detectors.traces.teg_graphs` reads them), and whether the span failed without an error line
of its own (an error its service did not log: a proxy's abort, a killed process; the scorer
doubles such an error's rarity, so in a system that logs no errors every error counts double);
last, the operation's code (0 = never seen). Per directed edge (both directions of each call): a
direction flag, the call's gap (client span less server span) as a z-score against the same
(caller operation, operation) pair, whether the client span failed, and whether training never saw
the pair; the node also carries its incoming call's three. One slow span moves its own self-time
feature and nothing else, so it stays visible however long the trace is.

Everything is built for all traces at once with pandas and numpy; nodes are grouped by trace and
edges sorted by source, so :func:`detectors.traces.graph_batch.gather_edges` cuts batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from detectors.robust import robust_baseline
from detectors.span_tree import span_index
from detectors.traces.client_calls import span_errors
from detectors.traces.gat_graphs import Baselines, depths, learn_baselines, shape_features, span_table
from detectors.traces.teg_graphs import HASH_DIM, hashed_bags

NUMERIC = ["duration_z", "self_z", "error", "children_delta", "missing_calls", "span_count_delta", "log_depth",
           "log_lines", "error_lines", "warn_lines", "unseen_lines", "in_gap_z", "in_client_error", "in_unseen_call",
           "unlogged_error"]
LOG_COLUMNS = [7, 8, 9, 10, 14]  # what logs give in NUMERIC; with the hashed bag, what ``use_logs=False`` zeroes
CALL_COLUMNS = [11, 12, 13]  # the call into the node (its edge from the parent); zeroed with the edges
EDGE = ["forward", "gap_z", "client_error", "unseen_call"]
Z_CLIP = 10.0
MIN_MS = 0.01  # times are floored here before the log (a zero self time is a pass-through span)
SIGMA_FLOOR = 0.05  # least robust sigma of a log time: a 5% move (a constant time must not divide by zero)


@dataclass
class LogTraceGraphs:
    """All traces' graphs as one node table and one edge list, nodes grouped by trace."""

    x: np.ndarray  # nodes x (len(NUMERIC) + HASH_DIM + 1): numeric, hashed templates, operation code
    edge_index: np.ndarray  # 2 x edges, sorted by source node
    edge_attr: np.ndarray  # edges x len(EDGE)
    trace_ptr: np.ndarray
    node_trace: np.ndarray
    trace_id: np.ndarray
    trace_start: np.ndarray  # datetime64[ns, UTC] of each trace's first span
    service: np.ndarray
    operation: np.ndarray  # "service span_name" per node

    @property
    def n_traces(self) -> int:
        return self.trace_id.size


@dataclass(eq=False)
class CallBaselines:
    """Robust medians and sigmas learned from training calls (:func:`learn_call_baselines`)."""

    duration: pd.DataFrame  # per operation, log ms
    self_time: pd.DataFrame  # per operation, log ms
    gap: pd.DataFrame  # per (caller operation, operation), log ms
    shape: Baselines  # children, span counts, calls seen and usual calls
    operations: pd.Index  # sorted; code i + 1 is operations[i]

    def __eq__(self, other: object) -> bool:
        names = ("duration", "self_time", "gap", "operations")
        return isinstance(other, CallBaselines) and self.shape == other.shape and all(
            getattr(self, n).equals(getattr(other, n)) for n in names)

    __hash__ = None  # type: ignore[assignment]


def _calls(tree: pd.DataFrame, gap_ms: np.ndarray) -> pd.DataFrame:
    """:func:`span_table` of the server tree, with each call's log duration, log self time and log gap
    (ms, floored at ``MIN_MS``; a missing gap stays NaN)."""
    table = span_table(tree)
    parent = table["parent"].to_numpy()
    duration = tree["duration"].to_numpy(dtype=float).clip(min=0)
    has_parent = parent >= 0
    child_ms = np.bincount(parent[has_parent], weights=duration[has_parent], minlength=len(tree))
    return table.assign(log_duration=np.log(np.maximum(duration, MIN_MS)),
                        log_self=np.log(np.maximum(duration - child_ms, MIN_MS)),
                        log_gap=np.log(np.maximum(np.asarray(gap_ms, dtype=float), MIN_MS)))


def learn_call_baselines(tree: pd.DataFrame, gap_ms: np.ndarray) -> CallBaselines:
    """Per-operation duration and self time, per call pair gap, from normal training calls."""
    calls = _calls(tree.reset_index(drop=True), gap_ms)
    operation = calls["operation"].rename("operation")
    with_gap = calls[calls["log_gap"].notna()]
    return CallBaselines(
        duration=robust_baseline(calls["log_duration"], operation, rel_floor=0.0, abs_floor=SIGMA_FLOOR),
        self_time=robust_baseline(calls["log_self"], operation, rel_floor=0.0, abs_floor=SIGMA_FLOOR),
        gap=robust_baseline(with_gap["log_gap"], [with_gap["caller"].rename("caller"),
                                                  with_gap["operation"].rename("operation")],
                            rel_floor=0.0, abs_floor=SIGMA_FLOOR),
        shape=learn_baselines(tree.reset_index(drop=True)),
        operations=pd.Index(sorted(pd.unique(operation)), dtype=object),
    )


def _z(values: np.ndarray, baseline: pd.DataFrame, keys: pd.Index | pd.MultiIndex) -> np.ndarray:
    """Robust z of ``values`` against the baseline row of each key; 0 where the key is unknown or the value missing."""
    stats = baseline.reindex(keys)
    z = (values - stats["median"].to_numpy()) / stats["sigma"].to_numpy()
    return np.nan_to_num(z, nan=0.0).clip(-Z_CLIP, Z_CLIP)


def build_log_trace_graphs(tree: pd.DataFrame, gap_ms: np.ndarray, client_failed: np.ndarray,
                           baselines: CallBaselines, logs: pd.DataFrame | None = None,
                           log_keys: np.ndarray | None = None, log_unseen: np.ndarray | None = None) -> LogTraceGraphs:
    """Build every trace's graph.

    Args:
        tree, gap_ms, client_failed: :func:`fold_calls` of the spans.
        baselines: :func:`learn_call_baselines` of the training calls.
        logs: log lines with ``trace_id``, ``span_id`` and ``level`` (lines of spans not in the tree
            are left out), or None; ``log_keys`` their template texts, ``log_unseen`` the lines no
            training template matched.
    """
    tree = tree.reset_index(drop=True)
    n = len(tree)
    calls = _calls(tree, gap_ms)
    operation = calls["operation"].to_numpy(dtype=object)
    parent = calls["parent"].to_numpy()
    has_parent = parent >= 0
    op_index = pd.Index(operation, dtype=object)
    duration_z = _z(calls["log_duration"].to_numpy(), baselines.duration, op_index)
    self_z = _z(calls["log_self"].to_numpy(), baselines.self_time, op_index)
    pairs = pd.MultiIndex.from_arrays([calls["caller"].to_numpy(dtype=object), operation])
    gap_z = _z(calls["log_gap"].to_numpy(), baselines.gap, pairs)
    children_delta, span_count_delta, unseen_call, missing_calls = shape_features(calls, baselines.shape)

    counts = np.zeros((n, 4))
    bag = np.zeros((n, HASH_DIM), dtype=np.float32)
    if logs is not None and len(logs):
        owner = span_index(tree).get_indexer(pd.MultiIndex.from_arrays([logs["trace_id"].astype(str),
                                                                        logs["span_id"].astype(str)]))
        keep = owner >= 0
        owner = owner[keep]
        level = logs["level"].astype(str).str.upper().to_numpy()[keep]
        flags = np.column_stack([np.ones(owner.size), np.isin(level, ["ERROR", "FATAL", "CRITICAL"]),
                                 np.isin(level, ["WARN", "WARNING"]), np.asarray(log_unseen)[keep]])
        np.add.at(counts, owner, flags)
        if owner.size:
            bag = hashed_bags(np.asarray(log_keys, dtype=object)[keep], owner, n, "log")

    trace_codes, trace_ids = pd.factorize(tree["trace_id"].astype(str))
    start = pd.to_datetime(tree["start_time"], utc=True).dt.as_unit("ns").astype("int64").to_numpy()
    order = np.lexsort((start, trace_codes))
    position = np.empty(n, np.int64)
    position[order] = np.arange(n)

    client_failed = np.asarray(client_failed, dtype=bool)
    error = span_errors(tree)
    numeric = np.column_stack([
        duration_z / 3, self_z / 3, error, children_delta, missing_calls, span_count_delta,
        np.log1p(depths(parent)), np.log1p(counts),
        gap_z / 3, client_failed, unseen_call, error & (counts[:, 1] == 0),
    ]).astype(np.float32)
    codes = (baselines.operations.get_indexer(op_index) + 1).astype(np.float32)
    x = np.empty((n, len(NUMERIC) + HASH_DIM + 1), dtype=np.float32)
    x[position] = np.column_stack([numeric, bag, codes])

    src, dst = position[parent[has_parent]], position[has_parent]
    call_attr = numeric[has_parent][:, CALL_COLUMNS]
    both_src, both_dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    attr = np.vstack([np.column_stack([np.ones(src.size), call_attr]), np.column_stack([np.zeros(src.size), call_attr])])
    edge_order = np.argsort(both_src, kind="stable")
    sorted_trace = trace_codes[order]
    first_start = pd.Series(start).groupby(trace_codes).min().to_numpy()
    return LogTraceGraphs(
        x=x, edge_index=np.stack([both_src[edge_order], both_dst[edge_order]]).astype(np.int64),
        edge_attr=attr[edge_order].astype(np.float32),
        trace_ptr=np.searchsorted(sorted_trace, np.arange(len(trace_ids) + 1)), node_trace=sorted_trace,
        trace_id=np.asarray(trace_ids, dtype=object), trace_start=pd.to_datetime(first_start, utc=True).to_numpy(),
        service=tree["service_name"].astype(str).to_numpy(dtype=object)[order], operation=operation[order],
    )
