"""Client spans as calls: who called whom, and what the network and the callee's front door added.

An instrumented RPC or HTTP call leaves two spans: a *client* span in the caller and, below it, the
callee's *server* span (OpenTelemetry's span kinds). The client span lasts the server span plus
what lies between them: the network both ways, the callee's accept queue, connection set-up and
TLS. That part, the client span's duration minus its server children's, is the call's *gap*. A
delay or packet loss on a pod's network leaves the pod's own server spans flat while every call
into it grows by the delay, so only the gap shows it (Nezha, FSE 2023, notes the same of its
network faults; TraceRCA and MicroRank read latency per call edge too).

A span is a client span when its ``span_kind`` says so, or, where the kind is not recorded, when
it runs inside its service (its parent is in the same service) and all of its children run in one
other service: a service's entry span is its server side, never a client span. A client span whose
server span is missing (the request never arrived, or the callee is not instrumented) keeps its
whole duration as the gap; its callee is the one training saw behind the same (service,
operation). Per call, also: a *client error* (the client span failed and no server span below it
did: a timeout, a refused or reset connection) and a *retry* (a client span for the same operation
under the same parent, right after one that failed). Vectorised over all spans: one parent
lookup, one group-by.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from detectors.span_tree import parent_rows

CALL_COLUMNS = ["caller", "callee", "operation", "start_time", "gap_ms", "server_missing", "client_error", "retry"]


def span_errors(spans: pd.DataFrame) -> np.ndarray:
    """HTTP-style error status (>= 500) per span; False where no status is recorded."""
    if "status_code" not in spans.columns:
        return np.zeros(len(spans), dtype=bool)
    return (spans["status_code"].fillna(0).astype("int64") >= 500).to_numpy()


@dataclass
class CallStructure:
    """Per span: its parent row, whether it is a client span, and what its children tell."""

    parent: np.ndarray  # row of the parent, -1 for a root or a parent not present
    service: np.ndarray
    client: np.ndarray  # a client span (declared, or inferred where the kind is not recorded)
    declared: np.ndarray  # span_kind says client
    unknown_kind: np.ndarray  # no span_kind recorded
    has_children: np.ndarray
    callee: np.ndarray  # service of the children where they all run in one other service, else None
    child_ms: np.ndarray  # summed duration of the children
    child_error: np.ndarray  # a child failed


def call_structure(spans: pd.DataFrame, parent: np.ndarray | None = None) -> CallStructure:
    """The parent lookup and per-parent child summary every call-level view needs, computed once."""
    n = len(spans)
    parent = parent_rows(spans) if parent is None else parent
    service = spans["service_name"].astype(str).to_numpy(dtype=object)
    rows = np.flatnonzero(parent >= 0)
    above = parent[rows]
    per_parent = pd.DataFrame({
        "parent": above, "same": service[rows] == service[above], "callee": service[rows],
        "ms": spans["duration"].to_numpy(dtype=float)[rows], "error": span_errors(spans)[rows],
    }).groupby("parent", sort=True).agg(same=("same", "any"), callees=("callee", "nunique"), callee=("callee", "first"),
                                         child_ms=("ms", "sum"), child_error=("error", "any"))
    at = per_parent.index.to_numpy()
    has_children = np.zeros(n, dtype=bool)
    has_children[at] = True
    remote = np.zeros(n, dtype=bool)
    remote[at] = (~per_parent["same"] & (per_parent["callees"] == 1)).to_numpy()
    callee = np.full(n, None, dtype=object)
    callee[at] = np.where(remote[at], per_parent["callee"].to_numpy(dtype=object), None)
    child_ms, child_error = np.zeros(n), np.zeros(n, dtype=bool)
    child_ms[at] = per_parent["child_ms"].to_numpy(dtype=float)
    child_error[at] = per_parent["child_error"].to_numpy(dtype=bool)
    kind = (spans["span_kind"].astype("string").str.lower().to_numpy(dtype=object, na_value=None)
            if "span_kind" in spans.columns else np.full(n, None, dtype=object))
    declared, unknown_kind = kind == "client", pd.isna(kind)
    inside = (parent >= 0) & (service == service[np.maximum(parent, 0)])
    client = declared | (unknown_kind & remote & inside)
    return CallStructure(parent, service, client, declared, unknown_kind, has_children, callee, child_ms, child_error)


def client_span_mask(spans: pd.DataFrame) -> np.ndarray:
    """Spans that are the caller's half of a call to another service (see the module doc): their time
    beyond their children's is the call's, not the caller's own work."""
    return call_structure(spans).client if len(spans) else np.zeros(0, dtype=bool)


def span_callees(spans: pd.DataFrame, parent: np.ndarray | None = None) -> np.ndarray:
    """The service each client span calls (from its server span below it); ``None`` for other spans
    and for client spans whose server span is missing. ``parent``: :func:`parent_rows`, if at hand."""
    if spans.empty:
        return np.full(0, None, dtype=object)
    calls = call_structure(spans, parent)
    return np.where(calls.client, calls.callee, None)


def server_tree(spans: pd.DataFrame) -> pd.DataFrame:
    """The spans without the client spans that have a server span below them, whose children hang
    from the client span's parent instead: the call tree as a trace of server spans draws it, for
    models that learn a trace's shape (a client span and its server span are one call there).
    Client spans whose request never arrived stay: they are the only trace of that call."""
    return fold_calls(spans)[0]


def fold_calls(spans: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """:func:`server_tree`, and per kept span what its folded client span said of the call into it:
    the call's gap in ms (NaN where no client span was folded above it) and whether the client
    span failed. A call edge of the server tree carries them (``logtraceguard``'s edge features)."""
    if spans.empty:
        return spans, np.zeros(0), np.zeros(0, dtype=bool)
    s = call_structure(spans)
    drop = s.client & s.has_children
    above = np.maximum(s.parent, 0)
    folded = (s.parent >= 0) & drop[above]
    duration = spans["duration"].to_numpy(dtype=float)
    gap = np.where(folded, np.maximum(duration[above] - s.child_ms[above], 0.0), np.nan)
    failed = folded & span_errors(spans)[above]
    if not drop.any():
        return spans, gap, failed
    parent_ids = spans["parent_span_id"].to_numpy(dtype=object)
    lifted = np.where(folded, parent_ids[above], parent_ids)
    return spans.assign(parent_span_id=lifted)[~drop].reset_index(drop=True), gap[~drop], failed[~drop]


def client_calls(spans: pd.DataFrame, known_callees: pd.Series | None = None) -> pd.DataFrame:
    """One row per client span (see the module doc), with the columns of :data:`CALL_COLUMNS`.

    Args:
        spans: the traces frame.
        known_callees: callee per (caller service, operation), from training
            (:func:`callee_map`); lets a client span without its server span still count.
    """
    if spans.empty:
        return pd.DataFrame(columns=CALL_COLUMNS)
    s = call_structure(spans)
    operation = spans["span_name"].astype(str).to_numpy(dtype=object)
    without_server = s.declared & ~s.has_children
    callee = s.callee.copy()
    if known_callees is not None and len(known_callees):
        known = known_callees.reindex(pd.MultiIndex.from_arrays([s.service, operation])).to_numpy(dtype=object)
        inside = (s.parent >= 0) & (s.service == s.service[np.maximum(s.parent, 0)])
        without_server |= ~s.has_children & s.unknown_kind & inside & pd.notna(known)
        callee = np.where(without_server, known, callee)
    rows = np.flatnonzero((s.client & pd.notna(s.callee)) | without_server)
    error = span_errors(spans)
    duration = spans["duration"].to_numpy(dtype=float)
    calls = pd.DataFrame({
        "caller": s.service[rows], "callee": callee[rows], "operation": operation[rows],
        # the datetime array itself: to_numpy() of a tz-aware column makes one Python object per span
        "start_time": spans["start_time"].array[rows] if "start_time" in spans.columns else pd.NaT,
        "gap_ms": np.maximum(duration[rows] - s.child_ms[rows], 0.0), "server_missing": without_server[rows],
        "client_error": error[rows] & ~s.child_error[rows], "failed": error[rows], "parent": s.parent[rows],
    })
    calls = calls[calls["callee"].notna() & (calls["callee"] != calls["caller"])]
    calls["retry"] = retried(calls)
    return calls[CALL_COLUMNS].reset_index(drop=True)


def retried(calls: pd.DataFrame) -> np.ndarray:
    """True for a call right after a failed call of the same operation under the same parent: the
    caller tried again. Fan-out (one call per item, none failing) is not a retry."""
    if calls.empty:
        return np.zeros(0, dtype=bool)
    order = calls.sort_values(["parent", "operation", "start_time"], kind="stable")
    same = (order["parent"].to_numpy()[1:] == order["parent"].to_numpy()[:-1]) & \
           (order["operation"].to_numpy()[1:] == order["operation"].to_numpy()[:-1]) & (order["parent"].to_numpy()[1:] >= 0)
    after_failure = np.r_[False, same & order["failed"].to_numpy(dtype=bool)[:-1]]
    return pd.Series(after_failure, index=order.index).reindex(calls.index).to_numpy()


def callee_map(calls: pd.DataFrame) -> pd.Series:
    """The callee most often behind each (caller, operation) among calls whose server span was seen."""
    seen = calls[~calls["server_missing"]]
    if seen.empty:
        return pd.Series(dtype=object)
    counts = seen.groupby(["caller", "operation", "callee"], observed=True).size().sort_values(ascending=False)
    best = counts.reset_index().drop_duplicates(["caller", "operation"]).set_index(["caller", "operation"])["callee"]
    return best.astype(object)
