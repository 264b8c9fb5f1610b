"""Span graphs for the GAT graph autoencoder: one graph per trace, spans as nodes, calls as edges.

Built for all traces at once with pandas joins and numpy, as in the trace-anomaly seed tools'
feature set: per span the encoded service and operation (with an unknown bucket, code 0, for names
never seen in training), log duration, error status, span kind, HTTP status, number of children
and depth; per trace the aggregates ``span_count``, ``total/avg/max/min_duration``,
``duration_std``, ``unique_services``, ``unique_spans``, ``error_rate`` and the ``root_span``
operation, repeated on each of its nodes. Four features compare a span with what training saw for
the same key, so one slow span, one missing or one extra call stands out in a single feature:
its log duration as a z-score against its operation, its number of children and its trace's span
count against the medians for its operation and its root operation, whether its
(caller operation, operation) pair was ever seen, and how many of the calls its operation almost
always makes (in at least 90% of training spans) it did not make. Nodes are grouped by trace (``trace_ptr``) and edges
sorted by source, so :func:`detectors.traces.graph_batch.gather` cuts batches without loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from detectors.span_tree import parent_rows

KINDS = ("server", "client", "producer", "consumer")
NUMERIC = ["log_duration", "error", *(f"kind_{k}" for k in KINDS), "kind_other", "has_http", "http_class",
           "log_children", "log_depth", "log_span_count", "log_total_duration", "log_avg_duration",
           "log_max_duration", "log_min_duration", "log_duration_std", "log_unique_services", "log_unique_spans",
           "error_rate", "duration_z", "children_delta", "span_count_delta", "unseen_call", "missing_calls"]
CODES = ["service", "operation", "root_operation"]
"""Columns of ``x``: the numeric features, then the three categorical codes (as floats)."""


@dataclass
class SpanGraphs:
    """All traces' span graphs as one node table and one edge list, nodes grouped by trace."""

    x: np.ndarray  # nodes x (len(NUMERIC) + len(CODES)), float32
    edge_index: np.ndarray  # 2 x edges (both directions of every call), sorted by source node
    trace_ptr: np.ndarray
    node_trace: np.ndarray
    trace_id: np.ndarray
    trace_start: np.ndarray  # datetime64[ns, UTC] of each trace's first span
    span_id: np.ndarray
    service: np.ndarray  # service name per node
    operation: np.ndarray  # "service span_name" per node
    duration: np.ndarray  # ms per node

    @property
    def n_traces(self) -> int:
        return self.trace_id.size


def vocabulary(values: pd.Series) -> pd.Index:
    """The sorted distinct names seen in training; code ``i + 1`` is ``vocab[i]``, 0 is unknown."""
    return pd.Index(sorted(values.astype(str).unique()), dtype=object)


def encode(values: np.ndarray, vocab: pd.Index) -> np.ndarray:
    """Codes of ``values`` in ``vocab`` (``+1``), with 0 for names the vocabulary does not hold."""
    return vocab.get_indexer(pd.Index(values, dtype=object)) + 1


def depths(parent: np.ndarray) -> np.ndarray:
    """Depth of every span in its tree by pointer jumping (a few vectorised passes, not a walk per span)."""
    depth = np.zeros(parent.size, dtype=np.int64)
    ancestor = parent.copy()
    for _ in range(64):
        alive = ancestor >= 0
        if not alive.any():
            break
        depth[alive] += 1
        ancestor[alive] = parent[ancestor[alive]]
    return depth


@dataclass(eq=False)
class Baselines:
    """What normal looks like per key, learned from training spans (:func:`learn_baselines`)."""

    duration: pd.DataFrame  # per operation: median and scale of log duration
    children: pd.Series  # per operation: median number of children
    span_count: pd.Series  # per root operation: median span count
    calls: pd.MultiIndex  # (caller operation, operation) pairs seen
    usual_calls: pd.MultiIndex  # (caller operation, operation) pairs present under >= 90% of the caller's spans
    usual_count: pd.Series  # per caller operation: how many usual calls it makes

    def __eq__(self, other: object) -> bool:
        names = ("duration", "children", "span_count", "calls", "usual_calls", "usual_count")
        return isinstance(other, Baselines) and all(getattr(self, n).equals(getattr(other, n)) for n in names)

    __hash__ = None  # type: ignore[assignment]


def span_table(spans: pd.DataFrame) -> pd.DataFrame:
    """Per span: trace code, operation, parent row, children, caller and root operation, trace span count."""
    trace = spans["trace_id"].astype(str)
    parent = parent_rows(spans)
    codes, _ = pd.factorize(trace)
    operation = (spans["service_name"].astype(str) + " " + spans["span_name"].astype(str)).to_numpy(dtype=object)
    has_parent = parent >= 0
    root = pd.Series(operation[~has_parent]).groupby(codes[~has_parent]).first()
    return pd.DataFrame({
        "trace": codes, "operation": operation, "parent": parent,
        "caller": np.where(has_parent, operation[np.maximum(parent, 0)], ""),
        "children": np.bincount(parent[has_parent], minlength=len(spans)),
        "root": root.reindex(codes).fillna("").to_numpy(dtype=object),
        "span_count": np.bincount(codes)[codes],
        "log_duration": np.log1p(spans["duration"].to_numpy(dtype=float).clip(min=0)),
    })


def learn_baselines(spans: pd.DataFrame) -> Baselines:
    """Per-key medians of normal spans: duration per operation, children per operation, span count per root."""
    table = span_table(spans.reset_index(drop=True))
    by_operation = table.groupby("operation")
    median = by_operation["log_duration"].median()
    spread = (table["log_duration"] - median.reindex(table["operation"]).to_numpy()).abs().groupby(table["operation"]).median()
    duration = pd.DataFrame({"median": median, "scale": np.maximum(1.4826 * spread, 0.05)})
    roots = table.drop_duplicates("trace")
    called = table.loc[table["parent"] >= 0, ["parent", "caller", "operation"]].drop_duplicates()
    calls = pd.MultiIndex.from_frame(called[["caller", "operation"]].drop_duplicates())
    callers_calling = called.groupby(["caller", "operation"]).size()
    presence = callers_calling / table["operation"].value_counts().reindex(
        callers_calling.index.get_level_values(0)).to_numpy()
    usual = presence[presence >= 0.9].index
    usual_count = pd.Series(usual.get_level_values(0)).value_counts()
    return Baselines(duration, by_operation["children"].median(), roots.groupby("root")["span_count"].median(), calls,
                     usual, usual_count)


def shape_features(table: pd.DataFrame, baselines: Baselines) -> tuple[np.ndarray, ...]:
    """Per span of :func:`span_table`: its children and its trace's span count against the medians
    for its operation and root operation (log ratios), whether its (caller, operation) pair is
    unseen, and how many of its operation's usual calls it did not make."""
    children_delta = np.log1p(table["children"].to_numpy()) - np.log1p(
        baselines.children.reindex(table["operation"]).fillna(0).to_numpy())
    typical = baselines.span_count.reindex(table["root"]).to_numpy()
    span_count_delta = np.where(np.isnan(typical), 0.0, np.log1p(table["span_count"].to_numpy()) - np.log1p(typical))
    pairs = pd.MultiIndex.from_arrays([table["caller"], table["operation"]])
    unseen_call = (table["parent"].to_numpy() >= 0) & ~pairs.isin(baselines.calls)
    made = table.loc[(table["parent"] >= 0).to_numpy() & pairs.isin(baselines.usual_calls), ["parent", "operation"]]
    made_count = np.bincount(made.drop_duplicates()["parent"].to_numpy(), minlength=len(table))
    missing_calls = baselines.usual_count.reindex(table["operation"]).fillna(0).to_numpy() - made_count
    return children_delta, span_count_delta, unseen_call, missing_calls


def build_span_graphs(spans: pd.DataFrame, services: pd.Index, operations: pd.Index,
                      baselines: Baselines) -> SpanGraphs:
    """Build every trace's graph from a span frame (the bundle's traces schema)."""
    spans = spans.reset_index(drop=True)
    table = span_table(spans)
    known = table["operation"].isin(baselines.duration.index).to_numpy()
    stats = baselines.duration.reindex(table["operation"])
    duration_z = np.where(known, (table["log_duration"].to_numpy() - stats["median"].to_numpy())
                          / stats["scale"].to_numpy(), 0.0).clip(-10, 10)
    children_delta, span_count_delta, unseen_call, missing_calls = shape_features(table, baselines)
    trace = spans["trace_id"].astype(str)
    parent = table["parent"].to_numpy()
    start = pd.to_datetime(spans["start_time"], utc=True).dt.as_unit("ns").astype("int64").to_numpy() \
        if "start_time" in spans.columns else np.zeros(len(spans), dtype=np.int64)
    duration = spans["duration"].to_numpy(dtype=float).clip(min=0)
    service = spans["service_name"].astype(str).to_numpy(dtype=object)
    operation = table["operation"].to_numpy(dtype=object)
    status = pd.to_numeric(spans["status_code"], errors="coerce").fillna(0).to_numpy() \
        if "status_code" in spans.columns else np.zeros(len(spans))
    error = status >= 500
    if "attr.otel.status_code" in spans.columns:
        error |= (spans["attr.otel.status_code"].astype(str) == "ERROR").to_numpy()
    kind = spans["span_kind"].astype(str).str.lower().to_numpy() if "span_kind" in spans.columns \
        else np.full(len(spans), "", dtype=object)

    trace_codes, trace_ids = table["trace"].to_numpy(), pd.unique(trace)
    order = np.lexsort((start, trace_codes))
    position = np.empty(order.size, np.int64)
    position[order] = np.arange(order.size)
    has_parent = parent >= 0
    children = table["children"].to_numpy()

    per_trace = pd.DataFrame({"t": trace_codes, "d": duration, "s": service, "o": operation, "e": error})
    grouped = per_trace.groupby("t", sort=True)
    aggregates = np.column_stack([
        grouped.size().to_numpy(), grouped["d"].sum().to_numpy(), grouped["d"].mean().to_numpy(),
        grouped["d"].max().to_numpy(), grouped["d"].min().to_numpy(), grouped["d"].std(ddof=0).to_numpy(),
        grouped["s"].nunique().to_numpy(), grouped["o"].nunique().to_numpy(),
    ]).astype(float)
    error_rate = grouped["e"].mean().to_numpy(dtype=float)

    numeric = np.column_stack([
        np.log1p(duration), error,
        *(kind == k for k in KINDS), ~np.isin(kind, KINDS),
        status >= 100, np.where(status >= 100, status / 100.0, 0.0),
        np.log1p(children), np.log1p(depths(parent)),
        np.log1p(aggregates[trace_codes]), error_rate[trace_codes],
        duration_z, children_delta, span_count_delta, unseen_call, missing_calls,
    ]).astype(np.float32)
    codes = np.column_stack([encode(service, services), encode(operation, operations),
                             encode(table["root"].to_numpy(dtype=object), operations)]).astype(np.float32)
    x = np.empty_like(np.hstack([numeric, codes]))
    x[position] = np.hstack([numeric, codes])

    src, dst = position[parent[has_parent]], position[has_parent]
    both_src, both_dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    edge_order = np.argsort(both_src, kind="stable")
    edge_index = np.stack([both_src[edge_order], both_dst[edge_order]]).astype(np.int64)

    sorted_trace = trace_codes[order]
    trace_ptr = np.searchsorted(sorted_trace, np.arange(len(trace_ids) + 1))
    first_start = pd.Series(start).groupby(trace_codes).min().to_numpy()
    return SpanGraphs(
        x=x, edge_index=edge_index, trace_ptr=trace_ptr, node_trace=sorted_trace,
        trace_id=np.asarray(trace_ids, dtype=object), trace_start=pd.to_datetime(first_start, utc=True).to_numpy(),
        span_id=spans["span_id"].astype(str).to_numpy(dtype=object)[order], service=service[order],
        operation=operation[order], duration=duration[order],
    )
