"""Call semantics over whole span arrays: retries, client timeouts, durations, error propagation.

Follows how RPC stacks behave (gRPC deadlines, Envoy/Hystrix retries): a caller retries a failed
synchronous call once with a fresh attempt that may land on another pod; it waits for a callee at
most its timeout, then gives up with a 504 and the callee is cancelled at the deadline; a callee
error fails its caller with a per-hop probability. A span's duration is its own work plus the
(capped) time of its synchronous children, computed level by level from the leaves up, so the
loops run per tree depth, never per span.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from synth.workload import SpanArrays

CALL_OVERHEAD_MS = 0.05
TIMEOUT_LADDER_MS = np.array([250.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0])


def take(spans: SpanArrays, rows: np.ndarray) -> SpanArrays:
    """Row subset/reorder of every array (parents are *not* remapped)."""
    return SpanArrays(**{f.name: getattr(spans, f.name)[rows] for f in fields(SpanArrays)})


def subtree_sizes(spans: SpanArrays) -> np.ndarray:
    """Number of spans in each span's subtree (itself included)."""
    size = np.ones(spans.size, dtype=np.int64)
    for d in range(spans.max_depth, 0, -1):
        level = np.flatnonzero(spans.depth == d)
        np.add.at(size, spans.parent[level], size[level])
    return size


NETWORK_MEDIAN_MS = 0.4  # a call's round trip inside a cluster, before any fault


def remote_calls(spans: SpanArrays) -> np.ndarray:
    """Spans that a synchronous call from another service started (they cross the network)."""
    return (spans.parent >= 0) & ~spans.is_async & (spans.service != spans.service[np.maximum(spans.parent, 0)])


def network_time(spans: SpanArrays, rng: np.random.Generator) -> np.ndarray:
    """The network's share of each call between two services: a log-normal round trip (median
    :data:`NETWORK_MEDIAN_MS`, with a tail); 0 for calls inside a service and for async messages."""
    return np.where(remote_calls(spans), rng.lognormal(np.log(NETWORK_MEDIAN_MS), 0.5, spans.size), 0.0)


def in_subtrees(spans: SpanArrays, roots: np.ndarray) -> np.ndarray:
    """The spans of ``roots`` (a mask) and every span below them (a subtree is contiguous in pre-order)."""
    out = np.zeros(spans.size, dtype=bool)
    first = np.flatnonzero(roots)
    if first.size == 0:
        return out
    change = np.zeros(spans.size + 1, dtype=np.int64)
    np.add.at(change, first, 1)
    np.add.at(change, first + subtree_sizes(spans)[first], -1)
    return np.cumsum(change)[:-1] > 0


def add_retries(spans: SpanArrays, roots: np.ndarray, instances: np.ndarray,
                rng: np.random.Generator) -> tuple[SpanArrays, np.ndarray]:
    """Insert a copy of each failed call's subtree right after it (its retry), keeping pre-order.

    Returns the new arrays and, per new row, the row it came from. Copies get a fresh pod (from
    ``instances``, pods per service), a jitter of their own work and ``is_retry``; the originals
    get ``retried``.
    """
    n = spans.size
    roots = np.sort(roots)
    if roots.size == 0:
        return spans, np.arange(n)
    lengths = subtree_sizes(spans)[roots]
    first_of_group = np.cumsum(lengths) - lengths
    k = np.arange(lengths.sum())
    group = np.repeat(np.arange(roots.size), lengths)
    source = k - first_of_group[group] + roots[group]  # rows are contiguous in pre-order
    last = roots + lengths - 1
    # originals keep their order; a copy goes after the last row of its subtree; for nested retries
    # the inner copy (deeper root) comes first so the outer subtree stays contiguous
    primary = np.concatenate([np.arange(n), last[group]])
    kind = np.concatenate([np.zeros(n), np.ones(k.size)])
    nesting = np.concatenate([np.zeros(n), -roots[group].astype(float)])
    local = np.concatenate([np.zeros(n), k.astype(float)])
    order = np.lexsort((local, nesting, kind, primary))
    new_position = np.empty(order.size, dtype=np.int64)
    new_position[order] = np.arange(order.size)

    parent_of = spans.parent[source]
    copy_parent = np.where(source == roots[group], new_position[np.maximum(parent_of, 0)],
                           new_position[n + k - (source - parent_of)])
    copy_parent = np.where(parent_of < 0, -1, copy_parent)
    original_parent = np.where(spans.parent >= 0, new_position[np.maximum(spans.parent, 0)], -1)

    everything = np.concatenate([np.arange(n), source])
    out = take(spans, everything[order])
    out.parent = np.concatenate([original_parent, copy_parent])[order]
    is_copy = kind[order].astype(bool)
    out.is_retry = out.is_retry | is_copy
    out.retried = np.zeros(out.size, bool)
    out.retried[new_position[roots]] = True
    out.retried[is_copy] = False
    out.instance[is_copy] = (rng.random(int(is_copy.sum())) * instances[out.service[is_copy]]).astype(np.int64)
    out.self_ms[is_copy] *= rng.lognormal(0.0, 0.2, int(is_copy.sum()))
    return out, everything[order]


@dataclass
class CallOutcome:
    """What each span recorded once calls, timeouts and errors have played out."""

    duration: np.ndarray  # ms, as the span recorded it
    start_ns: np.ndarray
    status: np.ndarray  # HTTP-style
    timed_out: np.ndarray  # its caller gave up waiting for it
    child_timed_out: np.ndarray  # it gave up waiting for a child
    failed_child: np.ndarray  # index of a failed (and not retried) synchronous child, or -1
    cancelled: np.ndarray  # cut at a caller's deadline (it, or a caller above it, timed out)

    @property
    def error(self) -> np.ndarray:
        return self.status >= 500


def _sum_into_parents(values: np.ndarray, parents: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(parents, weights=values, minlength=n)


def uncapped_durations(spans: SpanArrays) -> np.ndarray:
    """Own work plus synchronous children, with no timeouts or waits (the fault-free shape)."""
    duration = spans.self_ms.copy()
    for d in range(spans.max_depth, 0, -1):
        level = np.flatnonzero((spans.depth == d) & ~spans.is_async)
        duration += _sum_into_parents(duration[level] + CALL_OVERHEAD_MS, spans.parent[level], spans.size)
    return duration


def endpoint_timeouts(spans: SpanArrays, n_endpoints: int, factor: float = 8.0) -> np.ndarray:
    """Client timeout per callee endpoint: the first step of a 250 ms .. 30 s ladder above
    ``factor`` x its fault-free median duration, as operators set them."""
    median = pd.Series(uncapped_durations(spans)).groupby(spans.endpoint).median()
    typical = median.reindex(range(n_endpoints), fill_value=0.0).to_numpy()
    step = np.minimum(np.searchsorted(TIMEOUT_LADDER_MS, factor * typical), TIMEOUT_LADDER_MS.size - 1)
    return TIMEOUT_LADDER_MS[step]


def resolve_calls(spans: SpanArrays, own_status: np.ndarray, timeout_ms: np.ndarray, propagate: float,
                  rng: np.random.Generator) -> CallOutcome:
    """Durations, start times and status codes of all spans.

    Args:
        own_status: 0, or the status (500, 503) of an error the span raised itself.
        timeout_ms: client timeout per endpoint (callers wait at most this long for it).
        propagate: chance that a failed synchronous child fails its caller (per hop).
    """
    n = spans.size
    sync = ~spans.is_async
    timeout = timeout_ms[spans.endpoint]
    duration = spans.self_ms.copy()
    error = own_status > 0
    upward = rng.random(n) < propagate
    timed_out = np.zeros(n, bool)
    child_timed_out = np.zeros(n, bool)
    failed_child = np.full(n, -1, dtype=np.int64)
    for d in range(spans.max_depth, 0, -1):
        level = np.flatnonzero((spans.depth == d) & sync)
        parent = spans.parent[level]
        # the caller's clock runs from the request, so a network or pool wait counts towards its timeout
        over = duration[level] + spans.gap_ms[level] > timeout[level]
        timed_out[level] = over
        waited = np.minimum(duration[level] + spans.gap_ms[level], timeout[level]) + CALL_OVERHEAD_MS
        duration += _sum_into_parents(waited, parent, n)
        child_timed_out[parent[over]] = True
        failing = error[level] & ~spans.retried[level]
        failed_child[parent[failing]] = level[failing]
        error[parent[over | (failing & upward[level])]] = True
    recorded = np.where(timed_out, np.maximum(timeout - spans.gap_ms, 0.0), duration)

    # children run one after another, after 20% of the caller's own work, each after its wait
    step = np.where(sync, recorded + spans.gap_ms + CALL_OVERHEAD_MS, 0.0)
    before = pd.Series(step).groupby(spans.parent, sort=False).cumsum().to_numpy() - step
    offset = np.zeros(n)  # ms since the request arrived, so ns precision survives
    for d in range(1, spans.max_depth + 1):
        level = np.flatnonzero(spans.depth == d)
        parent = spans.parent[level]
        offset[level] = offset[parent] + 0.2 * spans.self_ms[parent] + before[level] + spans.gap_ms[level]
    # a cancelled call cancels its whole synchronous subtree at the same deadline
    end = offset + recorded
    cancelled = timed_out.copy()
    for d in range(1, spans.max_depth + 1):
        level = np.flatnonzero((spans.depth == d) & sync)
        limit = end[spans.parent[level]]
        cut = end[level] > limit
        cancelled[level[cut]] = True
        end[level] = np.minimum(end[level], limit)
        offset[level] = np.minimum(offset[level], limit)
    status = np.select([own_status > 0, cancelled | child_timed_out, error], [own_status, 504, 500], 200)
    start_ns = spans.request_time + np.round(offset * 1e6).astype(np.int64)
    return CallOutcome(end - offset, start_ns, status, timed_out, child_timed_out, failed_child, cancelled)
