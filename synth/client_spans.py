"""The caller's half of each call: a client span above every synchronous call between two services.

OpenTelemetry's RPC and HTTP instrumentations record a call twice: a ``client`` span in the caller
and the callee's ``server`` span below it (the layout of the Nezha TrainTicket and OnlineBoutique
traces). The client span starts when the caller sends the request and ends when the answer is
back, so it holds what the network and the callee's front door add: the wait before the call
(``gap_ms``: a network delay, retransmissions after packet loss, a pool wait) plus the server
span. A call whose caller gave up (its deadline passed) ends at the deadline with 504 on the
client side. A call whose request never arrived (lost, connection reset) leaves the client span
alone, with 503, and no server span or anything below it. Vectorised: one pass over the rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from synth.calls import CALL_OVERHEAD_MS, CallOutcome, in_subtrees, remote_calls
from synth.text import random_ids
from synth.workload import SpanArrays

LOST_STATUS = 503  # the client's view of a request that never reached the server (UNAVAILABLE)


def add_client_spans(trace: pd.DataFrame, spans: SpanArrays, outcome: CallOutcome, lost: np.ndarray,
                     rng: np.random.Generator) -> pd.DataFrame:
    """``trace`` (rows aligned with ``spans``) with a client span before each remote synchronous call.

    Args:
        trace: the server (and consumer) spans, one row per span of ``spans``.
        outcome: the resolved calls (deadlines).
        lost: per span, the request never reached its service: the span and its subtree are
            dropped and only the caller's client span, failed, remains.

    Returns:
        The spans in pre-order, each client span just before its server span.
    """
    n = spans.size
    parent = spans.parent
    never_ran = in_subtrees(spans, lost)
    rows = np.flatnonzero(remote_calls(spans) & (~never_ran | lost))  # calls made by spans that ran
    caller = parent[rows]
    ids = random_ids(rng, rows.size)
    starts = trace["start_time"].astype("int64").to_numpy()
    ends = starts + np.round(trace["duration"].to_numpy() * 1e6).astype(np.int64)
    gap_ns = np.round(spans.gap_ms[rows] * 1e6).astype(np.int64)
    # a lost request's client gives up when its server span would have begun: after the wait
    served = np.where(lost[rows], starts[rows], ends[rows] + round(CALL_OVERHEAD_MS * 1e6))
    # inside the caller's span: a call cancelled at a caller's deadline was cut there with it
    start_ns = np.clip(starts[rows] - gap_ns, starts[caller], ends[caller])
    end_ns = np.clip(served, start_ns, ends[caller])
    status = np.where(outcome.timed_out[rows], 504, trace["status_code"].to_numpy()[rows])
    status = np.where(lost[rows], LOST_STATUS, status)
    client = pd.DataFrame({
        "trace_id": trace["trace_id"].to_numpy()[rows],
        "span_id": ids,
        "parent_span_id": trace["span_id"].to_numpy()[caller],
        "span_name": trace["span_name"].to_numpy()[rows],
        "service_name": trace["service_name"].to_numpy()[caller],
        "start_time": pd.to_datetime(start_ns, utc=True),
        "duration": np.ceil((end_ns - start_ns) / 1e3) / 1e3,  # whole microseconds, never ending before its server span
        "status_code": status,
        "span_kind": "client",
        "attr.http.method": trace["attr.http.method"].to_numpy()[rows],
        "attr.http.response.status_code": status,
        "attr.k8s.pod.name": trace["attr.k8s.pod.name"].to_numpy()[caller],
        "attr.retry": trace["attr.retry"].to_numpy()[rows],
        "label": trace["label"].to_numpy()[rows],
        "_service_index": trace["_service_index"].to_numpy()[caller],
    })
    server = trace.copy()
    server.loc[server.index[rows], "parent_span_id"] = ids
    # pre-order: the client span of row i goes just before it
    position = np.concatenate([2 * np.arange(n) + 1, 2 * rows])
    merged = pd.concat([server, client], ignore_index=True)
    merged = merged.iloc[np.argsort(position, kind="stable")]
    keep = ~np.concatenate([never_ran, np.zeros(rows.size, dtype=bool)])[np.argsort(position, kind="stable")]
    return merged[keep].reset_index(drop=True)
