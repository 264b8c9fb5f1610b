"""Fault schedule, the faults' effects on spans, and the spans each fault changed (ground truth).

Effects touch a span's *own* work, its wait before the call, or its *own* error only; latency,
timeouts and errors then reach the callers through ``synth.calls``, so the root cause is where a
change starts, not where it is loudest. The fault types follow the chaos experiments of the Nezha,
RCAEval and AIOps-challenge datasets (CPU, memory, network delay and packet loss, exceptions,
pool exhaustion, bad deploys). A network fault sits on the target's network, as a chaos tool's
``tc netem`` on its pods does: every call into the target waits (or, with packet loss, is retried
at the TCP level, times out, or never arrives), while the target's own work is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from synth.calls import in_subtrees
from synth.topology import Topology
from synth.workload import SpanArrays

FAULT_TYPES = ("latency", "error_burst", "cpu_saturation", "memory_leak", "network_delay", "pool_exhaustion",
               "bad_deploy", "packet_loss")
ELIGIBLE_ROLES = {
    "latency": ("service", "db", "cache"),
    "error_burst": ("service",),
    "cpu_saturation": ("service", "frontend"),
    "memory_leak": ("service", "frontend"),
    "network_delay": ("service", "db", "cache"),
    "pool_exhaustion": ("db",),
    "bad_deploy": ("service", "frontend"),
    "packet_loss": ("service", "db", "cache"),
}
NETWORK_FAULTS = ("network_delay", "packet_loss")  # on the target's network: every call into it
POD_FAULTS = ("cpu_saturation", "memory_leak")  # injected into one pod, not the whole service
ERROR_FAULTS = ("error_burst", "bad_deploy")  # change only the spans that fail
MAGNITUDE = {  # (low, high) before the preset's severity scale; see apply_effects for the units
    "latency": (50.0, 250.0), "error_burst": (0.3, 0.6), "cpu_saturation": (3.0, 6.0), "memory_leak": (3.0, 6.0),
    "network_delay": (80.0, 250.0), "pool_exhaustion": (150.0, 400.0), "bad_deploy": (0.15, 0.35),
    "packet_loss": (0.1, 0.25),
}
RTO_MS = 200.0  # Linux's minimum TCP retransmission timeout; each further loss doubles it
RESTART_NS = 60_000_000_000  # an OOM-killed pod is down this long before the fault window ends

# why a span raised its own error (the log template and status depend on it); CAUSE_LOST: the
# request never reached the span's service (packet loss), so the span never ran
CAUSE_NONE, CAUSE_BACKGROUND, CAUSE_EXCEPTION, CAUSE_DEPLOY, CAUSE_POOL, CAUSE_DOWN, CAUSE_LOST = range(7)
CAUSE_STATUS = np.array([0, 500, 500, 500, 503, 503, 503])
FAULT_CAUSE = {"error_burst": CAUSE_EXCEPTION, "bad_deploy": CAUSE_DEPLOY, "pool_exhaustion": CAUSE_POOL,
               "memory_leak": CAUSE_DOWN}


@dataclass
class Fault:
    """One injected fault (times in ns since epoch)."""

    id: str
    type: str
    service: int
    instance: int | None
    start: int
    end: int
    magnitude: float

    @property
    def leak_end(self) -> int:
        """memory_leak: when the pod is OOM-killed (it restarts until ``end``)."""
        return self.end - min(RESTART_NS, (self.end - self.start) // 3)

    def to_truth(self, topology: Topology, affected: list[str]) -> dict[str, object]:
        name = topology.services[self.service]
        truth: dict[str, object] = {
            "id": self.id,
            "type": self.type,
            "root_cause_service": name,
            "root_cause_instance": f"{name}-{self.instance}" if self.instance is not None else None,
            "start": pd.Timestamp(self.start, tz="UTC").isoformat(),
            "end": pd.Timestamp(self.end, tz="UTC").isoformat(),
            "affected_services": affected,
            "magnitude": round(self.magnitude, 3),
        }
        return truth


def schedule_faults(topology: Topology, spans: SpanArrays, n_faults: int, types: list[str], start_ns: int,
                    end_ns: int, warmup_fraction: float, duration_ns: int, severity: float, overlap: bool,
                    rng: np.random.Generator) -> list[Fault]:
    """Place ``n_faults`` faults after the warm-up, cycling through ``types``.

    Targets are services that at least 5% of requests reach (a fault nobody calls is invisible);
    a network fault's target is also called by another service that often. Without
    ``overlap`` each fault gets its own slot; with it, start times are uniform and faults may
    overlap. ``severity`` scales every magnitude (presets make faults subtler or louder).
    """
    if n_faults == 0:
        return []
    first = start_ns + int((end_ns - start_ns) * warmup_fraction)
    slot = fault_slot(end_ns - first, n_faults, duration_ns, overlap)
    roles = np.array(topology.roles)
    n_requests = max(int(np.unique(spans.request).size), 1)
    reached = np.bincount(spans.service, minlength=len(roles)) >= 0.05 * n_requests
    callers = _busy_callers(topology, spans, 0.05 * n_requests)
    faults = []
    for i in range(n_faults):
        kind = types[i % len(types)]
        candidates = np.flatnonzero(np.isin(roles, ELIGIBLE_ROLES[kind]) & reached)
        if kind in NETWORK_FAULTS:
            candidates = np.array([c for c in candidates if callers[c]])
        if candidates.size == 0:
            raise ValueError(f"the topology has no service that a '{kind}' fault can target "
                             f"(roles {', '.join(ELIGIBLE_ROLES[kind])})")
        service = int(rng.choice(candidates))
        offset = 0 if overlap else i * slot
        begin = first + offset + int(rng.uniform(0.05 if overlap else 0.1, 0.95 if overlap else 0.9) * (slot - duration_ns))
        instance = int(rng.integers(0, topology.instances[service])) if kind in POD_FAULTS else None
        low, high = MAGNITUDE[kind]
        magnitude = rng.uniform(low, high) * severity
        if kind in ("cpu_saturation", "memory_leak"):  # multipliers: scale the excess over 1
            magnitude = 1 + (rng.uniform(low, high) - 1) * severity
        faults.append(Fault(f"F{i + 1:03d}", kind, service, instance, begin, begin + duration_ns,
                            float(min(magnitude, 0.95) if kind in ERROR_FAULTS + ("packet_loss",) else magnitude)))
    return faults


def fault_slot(after_warmup_ns: int, n_faults: int, duration_ns: int, overlap: bool) -> int:
    """Length of the time slot each fault is placed in; ValueError if the faults do not fit."""
    slot = after_warmup_ns // (1 if overlap else max(n_faults, 1))
    if slot < duration_ns:
        raise ValueError(f"{n_faults} faults of {duration_ns / 6e10:.0f} min do not fit after the warm-up; "
                         "use fewer faults, a shorter fault duration or a longer period")
    return slot


def _busy_callers(topology: Topology, spans: SpanArrays, min_calls: float) -> list[list[int]]:
    """Per service, the application services (not datastores) that call it at least ``min_calls`` times."""
    has_parent = np.flatnonzero(spans.parent >= 0)
    pairs = pd.Series(1, index=pd.MultiIndex.from_arrays(
        [spans.service[spans.parent[has_parent]], spans.service[has_parent]])).groupby(level=[0, 1]).sum()
    callers: list[list[int]] = [[] for _ in topology.services]
    for (caller, callee), count in pairs.items():
        if count >= min_calls and topology.roles[caller] in ("gateway", "frontend", "service"):
            callers[int(callee)].append(int(caller))
    return callers


def fault_masks(spans: SpanArrays, faults: list[Fault]) -> list[np.ndarray]:
    """Per fault, the spans it hits directly: its service (pod) inside its window; for a network
    fault, the target's spans called from another service (calls inside the service stay local)."""
    masks = []
    for fault in faults:
        hit = (spans.service == fault.service) & (spans.request_time >= fault.start) & (spans.request_time < fault.end)
        if fault.instance is not None:
            hit &= spans.instance == fault.instance
        if fault.type in NETWORK_FAULTS:
            hit &= (spans.parent >= 0) & (spans.service[np.maximum(spans.parent, 0)] != fault.service)
        masks.append(hit)
    return masks


def own_error_causes(spans: SpanArrays, faults: list[Fault], masks: list[np.ndarray], background: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """Per span, why it raised an error itself (``CAUSE_*``), or ``CAUSE_NONE``.

    Args:
        background: per service, the share of its spans that fail on their own in normal operation.
    """
    cause = np.where(rng.random(spans.size) < background[spans.service], CAUSE_BACKGROUND, CAUSE_NONE)
    for fault, hit in zip(faults, masks, strict=True):
        draw = rng.random(spans.size)
        if fault.type in ("error_burst", "bad_deploy"):
            cause[hit & (draw < fault.magnitude)] = FAULT_CAUSE[fault.type]
        elif fault.type == "pool_exhaustion":  # callers time out waiting for a connection
            cause[hit & (draw < min(0.15 + fault.magnitude / 1500, 0.6))] = CAUSE_POOL
        elif fault.type == "memory_leak":  # the pod is down while it restarts after the OOM kill
            cause[hit & (spans.request_time >= fault.leak_end) & (draw < 0.97)] = CAUSE_DOWN
        elif fault.type == "packet_loss":  # the connection fails outright: reset, or SYNs unanswered
            cause[hit & (draw < fault.magnitude / 2)] = CAUSE_LOST
    return cause.astype(np.int8)


def retry_roots(spans: SpanArrays, cause: np.ndarray, roles: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Failed synchronous calls that their caller retries: always on 503, on 500 three times in ten."""
    caller_role = roles[spans.service[np.maximum(spans.parent, 0)]]
    retryable = (CAUSE_STATUS[cause] == 503) | ((cause != CAUSE_NONE) & (rng.random(spans.size) < 0.3))
    eligible = (cause != CAUSE_NONE) & (spans.parent >= 0) & ~spans.is_async & ~spans.is_retry
    return np.flatnonzero(eligible & retryable & np.isin(caller_role, ["gateway", "frontend", "service"]))


def apply_effects(spans: SpanArrays, faults: list[Fault], masks: list[np.ndarray], topology: Topology,
                  rng: np.random.Generator) -> None:
    """Stretch own work (``self_ms``) or the wait before a call (``gap_ms``) of the hit spans, in place."""
    for fault, hit in zip(faults, masks, strict=True):
        idx = np.flatnonzero(hit)
        if fault.type == "latency":  # magnitude: mean extra ms of work per span, as chaos tools inject it
            spans.self_ms[idx] += fault.magnitude * rng.lognormal(0, 0.25, idx.size)
        elif fault.type == "cpu_saturation":  # magnitude: slowdown factor of the pod's work
            spans.self_ms[idx] *= fault.magnitude
        elif fault.type == "memory_leak":  # GC thrash grows with the heap: slowdown up to magnitude
            progress = np.clip((spans.request_time[idx] - fault.start) / (fault.leak_end - fault.start), 0, 1)
            spans.self_ms[idx] *= 1 + (fault.magnitude - 1) * progress ** 2
        elif fault.type == "network_delay":  # magnitude: mean extra ms per call into the target
            spans.gap_ms[idx] += fault.magnitude * rng.lognormal(0, 0.3, idx.size)
        elif fault.type == "packet_loss":  # magnitude: share of packets lost
            spans.gap_ms[idx] += retransmission_wait(fault.magnitude, idx.size, rng)
        elif fault.type == "pool_exhaustion":  # magnitude: mean wait (ms) for a free connection
            spans.gap_ms[idx] += rng.exponential(fault.magnitude, idx.size)
        elif fault.type == "bad_deploy":  # the new build is also a little slower
            spans.self_ms[idx] *= 1.3


def lose_requests(spans: SpanArrays, cause: np.ndarray) -> np.ndarray:
    """Requests that packet loss kept from arriving: the client gives up after one retransmission
    timeout (a reset or refused connection), and the call's service, and everything below it,
    does no work. Returns the mask of lost spans (in place on ``spans``)."""
    lost = cause == CAUSE_LOST
    spans.gap_ms[lost] = RTO_MS
    spans.self_ms[in_subtrees(spans, lost)] = 0.0
    return lost


def retransmission_wait(loss: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """ms a call waits for TCP retransmissions when a share ``loss`` of packets is lost.

    Each loss waits one retransmission timeout, doubling from :data:`RTO_MS`, until a packet
    gets through: ``k`` losses in a row cost ``RTO_MS * (2**k - 1)``. A call sends a few packets, so
    it meets a first loss with about twice the packet loss rate.
    """
    hit = rng.random(n) < min(2 * loss, 0.95)
    losses = np.where(hit, rng.geometric(1 - loss, n), 0)
    return RTO_MS * (2.0 ** losses - 1)


def changed_spans(spans: SpanArrays, fault: Fault, hit: np.ndarray, cause: np.ndarray, error: np.ndarray) -> np.ndarray:
    """Spans whose behaviour the fault changed: the hit spans (for error faults, those that failed
    because of it) and every synchronous caller above them that the change reached."""
    changed = hit & (cause == FAULT_CAUSE[fault.type]) if fault.type in ERROR_FAULTS else hit.copy()
    for d in range(spans.max_depth, 0, -1):
        level = np.flatnonzero((spans.depth == d) & changed & ~spans.is_async)
        if fault.type in ERROR_FAULTS:
            level = level[error[spans.parent[level]]]
        changed[spans.parent[level]] = True
    return changed


def affected_services(spans: SpanArrays, mask: np.ndarray, changed: np.ndarray, topology: Topology) -> list[str]:
    """Services whose spans in the faulty traces changed (the root cause and the callers above it)."""
    traces = np.unique(spans.request[mask])
    in_trace = np.isin(spans.request, traces) & changed
    return sorted({topology.services[s] for s in np.unique(spans.service[in_trace])})
