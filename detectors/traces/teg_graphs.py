"""Trace-event graphs (TEGs), after DeepTraLog (Zhang et al., ICSE 2022): one graph per trace whose
nodes are its spans and the log events they wrote.

Edges: parent span -> child span (sync and async calls), span -> its first log event, and each
log event -> the next one in the same span (their order in time); every edge also runs backwards,
so a failure deep in the tree reaches the root in a few message-passing steps and vice versa.
Node features: event kind, a hashed bag of tokens of the operation (spans) or of the Drain
template (logs) - no downloaded embeddings -, the span's log-duration z-score against its
operation's training baseline, error status or log level, and an unseen-template flag.

Everything is built for all traces at once with pandas joins and numpy; nodes are sorted by
trace, so a batch of traces is a contiguous slice of nodes and edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import HashingVectorizer

from detectors.span_tree import parent_rows, span_index

HASH_DIM = 32
EXTRA = ["is_span", "is_log", "duration_z", "error", "warn", "unseen"]


@dataclass
class TraceGraphs:
    """All traces' graphs as one node table and one edge list, nodes grouped by trace."""

    x: np.ndarray  # nodes x features (float32)
    edge_index: np.ndarray  # 2 x edges, sorted by source node
    node_trace: np.ndarray  # trace position of each node
    node_service: np.ndarray  # service name of each node
    node_key: np.ndarray  # operation or template text of each node (evidence, per-key centres)
    trace_ptr: np.ndarray  # nodes of trace t are trace_ptr[t]:trace_ptr[t + 1]
    trace_id: np.ndarray
    trace_start: np.ndarray  # datetime64[ns, UTC] of each trace's first span

    @property
    def n_traces(self) -> int:
        return self.trace_id.size


TOKENS = r"[A-Za-z][A-Za-z_]+|<\w+>"  # words and <KIND> markers; never across a space


def _vectoriser(norm: str | None) -> HashingVectorizer:
    return HashingVectorizer(n_features=HASH_DIM, alternate_sign=False, norm=norm, token_pattern=TOKENS)


def hashed(texts: np.ndarray, prefix: str) -> np.ndarray:
    """Hashed token counts (l2-normalised) of each distinct text, then indexed back."""
    # factorize, not np.unique: a numpy string array is as wide as its longest text times every row
    codes, distinct = pd.factorize(pd.Series(texts, dtype=object).astype(str))
    matrix = _vectoriser("l2").transform([f"{prefix} {t}" for t in distinct]).toarray().astype(np.float32)
    return matrix[codes]


def hashed_bags(texts: np.ndarray, owner: np.ndarray, size: int, prefix: str) -> np.ndarray:
    """Per owner row (``size`` of them), the hashed token counts of ``prefix`` and all its texts
    together, l2-normalised: what :func:`hashed` gives for the texts joined by spaces (tokens never
    cross a space, so counts add up), without joining a string per owner. Rows with no text are 0."""
    codes, distinct = pd.factorize(pd.Series(texts, dtype=object).astype(str))
    counts = _vectoriser(None).transform([*distinct, prefix]).toarray()
    bags = np.zeros((size, HASH_DIM))
    np.add.at(bags, owner, counts[codes])
    has = np.bincount(owner, minlength=size) > 0
    bags[has] += counts[-1]
    norm = np.linalg.norm(bags, axis=1, keepdims=True)
    return np.divide(bags, norm, out=np.zeros_like(bags), where=norm > 0).astype(np.float32)


def build_graphs(spans: pd.DataFrame, logs: pd.DataFrame | None, log_keys: np.ndarray | None,
                 log_unseen: np.ndarray | None, duration_z: np.ndarray) -> TraceGraphs:
    """Build the graphs of every trace in ``spans``.

    Args:
        logs: log lines with ``trace_id``/``span_id`` (lines of unknown spans are dropped), or None.
        log_keys: template text of each log line (aligned with ``logs``); ``log_unseen`` flags lines
            no training template matched.
        duration_z: each span's log-duration z-score against its operation's baseline.
    """
    spans = spans.reset_index(drop=True)
    n_spans = len(spans)
    span_key = span_index(spans)
    parent = parent_rows(spans, span_key)
    status = spans["status_code"].fillna(0).to_numpy() if "status_code" in spans.columns else np.zeros(n_spans)
    start = pd.to_datetime(spans["start_time"], utc=True).dt.as_unit("ns").astype("int64").to_numpy()
    span_text = (spans["service_name"].astype(str) + " " + spans["span_name"].astype(str)).to_numpy()

    if logs is not None and len(logs):
        owner = span_key.get_indexer(pd.MultiIndex.from_arrays([logs["trace_id"].astype(str), logs["span_id"].astype(str)]))
        keep = owner >= 0
        owner, keys, unseen = owner[keep], np.asarray(log_keys)[keep], np.asarray(log_unseen)[keep]
        level = logs["level"].astype(str).to_numpy()[keep]
        log_time = pd.to_datetime(logs["timestamp"], utc=True).dt.as_unit("ns").astype("int64").to_numpy()[keep]
    else:
        owner, keys, unseen = np.zeros(0, np.int64), np.zeros(0, str), np.zeros(0, bool)
        level, log_time = np.zeros(0, str), np.zeros(0, np.int64)
    n_logs = owner.size

    trace_codes, trace_ids = pd.factorize(spans["trace_id"].astype(str))
    node_trace = np.concatenate([trace_codes, trace_codes[owner]])
    node_time = np.concatenate([start, log_time])
    order = np.lexsort((node_time, node_trace))  # nodes grouped by trace, then in time order
    position = np.empty(order.size, np.int64)
    position[order] = np.arange(order.size)

    span_node, log_node = position[:n_spans], position[n_spans:]
    has_parent = parent >= 0
    call_src, call_dst = span_node[parent[has_parent]], span_node[has_parent]
    # log events of one span: the span -> first event -> next event ...
    log_order = np.lexsort((log_time, owner))
    owner_sorted = owner[log_order]
    first_in_span = np.r_[True, owner_sorted[1:] != owner_sorted[:-1]] if n_logs else np.zeros(0, bool)
    previous = np.r_[-1, log_node[log_order][:-1]] if n_logs else np.zeros(0, np.int64)
    seq_src = np.where(first_in_span, span_node[owner_sorted], previous)
    seq_dst = log_node[log_order]
    src = np.concatenate([call_src, seq_src, call_dst, seq_dst])
    dst = np.concatenate([call_dst, seq_dst, call_src, seq_src])
    edge_order = np.argsort(src, kind="stable")
    edge_index = np.stack([src[edge_order], dst[edge_order]]).astype(np.int64)

    x = np.zeros((n_spans + n_logs, HASH_DIM + len(EXTRA)), dtype=np.float32)
    x[span_node, :HASH_DIM] = hashed(span_text, "span")
    x[span_node, HASH_DIM + 0] = 1.0
    x[span_node, HASH_DIM + 2] = np.clip(duration_z, -10, 10) / 3
    x[span_node, HASH_DIM + 3] = status >= 500
    if n_logs:
        x[log_node, :HASH_DIM] = hashed(keys, "log")
        x[log_node, HASH_DIM + 1] = 1.0
        x[log_node, HASH_DIM + 3] = np.isin(level, ["ERROR", "FATAL"])
        x[log_node, HASH_DIM + 4] = level == "WARN"
        x[log_node, HASH_DIM + 5] = unseen

    services = spans["service_name"].astype(str).to_numpy()
    node_service = np.empty(order.size, dtype=object)  # filled at sorted positions, like x
    node_service[span_node], node_service[log_node] = services, services[owner]
    node_key = np.empty(order.size, dtype=object)
    node_key[span_node], node_key[log_node] = span_text, keys
    sorted_trace = node_trace[order]
    trace_ptr = np.searchsorted(sorted_trace, np.arange(len(trace_ids) + 1))
    first_start = pd.Series(start).groupby(trace_codes).min().to_numpy()
    return TraceGraphs(x, edge_index, sorted_trace, node_service, node_key, trace_ptr,
                       np.asarray(trace_ids, dtype=object), pd.to_datetime(first_start, utc=True).to_numpy())
