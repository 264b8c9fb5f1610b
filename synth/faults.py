"""Fault schedule and its effects on spans, with ground truth.

Effects are applied to a span's *own* work and status, before durations are aggregated upward,
so latency propagates to every caller through the call tree and errors propagate to callers
with a per-hop probability: the root cause is where the change starts, not where it is loudest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from synth.topology import Topology
from synth.workload import SpanArrays

FAULT_TYPES = ("latency", "error_burst", "cpu_saturation")
ELIGIBLE_ROLES = {"latency": ("service", "db", "cache"), "error_burst": ("service",), "cpu_saturation": ("service",)}


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

    def to_truth(self, topology: Topology, affected: list[str]) -> dict[str, object]:
        name = topology.services[self.service]
        return {
            "id": self.id,
            "type": self.type,
            "root_cause_service": name,
            "root_cause_instance": f"{name}-{self.instance}" if self.instance is not None else None,
            "start": pd.Timestamp(self.start, tz="UTC").isoformat(),
            "end": pd.Timestamp(self.end, tz="UTC").isoformat(),
            "affected_services": affected,
            "magnitude": round(self.magnitude, 3),
        }


def schedule_faults(topology: Topology, n_faults: int, types: list[str], start_ns: int, end_ns: int,
                    warmup_fraction: float, duration_ns: int, rng: np.random.Generator) -> list[Fault]:
    """Place ``n_faults`` non-overlapping faults after the warm-up, cycling through ``types``."""
    if n_faults == 0:
        return []
    first = start_ns + int((end_ns - start_ns) * warmup_fraction)
    span = end_ns - first
    slot = span // n_faults
    if slot < duration_ns:
        raise ValueError(f"{n_faults} faults of {duration_ns / 6e10:.0f} min do not fit after the warm-up; "
                         "use fewer faults, a shorter fault duration or a longer period")
    roles = np.array(topology.roles)
    faults = []
    for i in range(n_faults):
        kind = types[i % len(types)]
        candidates = np.flatnonzero(np.isin(roles, ELIGIBLE_ROLES[kind]))
        service = int(rng.choice(candidates))
        begin = first + i * slot + int(rng.uniform(0.1, 0.9) * (slot - duration_ns))
        instance = int(rng.integers(0, topology.instances[service])) if kind == "cpu_saturation" else None
        magnitude = {"latency": rng.uniform(8, 20), "error_burst": rng.uniform(0.3, 0.6),
                     "cpu_saturation": rng.uniform(3, 6)}[kind]
        faults.append(Fault(f"F{i + 1:03d}", kind, service, instance, begin, begin + duration_ns, float(magnitude)))
    return faults


def fault_masks(spans: SpanArrays, faults: list[Fault]) -> list[np.ndarray]:
    """Per fault, the spans it hits directly (its service/instance, inside its window)."""
    masks = []
    for fault in faults:
        hit = (spans.service == fault.service) & (spans.request_time >= fault.start) & (spans.request_time < fault.end)
        if fault.instance is not None:
            hit &= spans.instance == fault.instance
        masks.append(hit)
    return masks


def apply_self_time(spans: SpanArrays, faults: list[Fault], masks: list[np.ndarray], topology: Topology) -> None:
    """Latency and CPU faults stretch the own work of the spans they hit (in place)."""
    for fault, hit in zip(faults, masks, strict=True):
        if fault.type == "latency":
            spans.self_ms[hit] += fault.magnitude * topology.base_latency_ms[fault.service] * 4
        elif fault.type == "cpu_saturation":
            spans.self_ms[hit] *= fault.magnitude


def status_codes(spans: SpanArrays, faults: list[Fault], masks: list[np.ndarray], propagate: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """HTTP status per span and whether the error originated in the span itself.

    Background: 0.2% of spans fail on their own. Error bursts fail a share of the root cause's
    spans; a failed synchronous child fails its caller with probability ``propagate`` per hop.
    """
    own_error = rng.random(spans.request.size) < 0.002
    for fault, hit in zip(faults, masks, strict=True):
        if fault.type == "error_burst":
            own_error |= hit & (rng.random(spans.request.size) < fault.magnitude)
    error = own_error.copy()
    upward = rng.random(spans.request.size) < propagate
    for d in range(int(spans.depth.max()), 0, -1):
        level = np.flatnonzero((spans.depth == d) & error & ~spans.is_async & upward)
        error[spans.parent[level]] = True
    status = np.where(error, 500, 200)
    return status, own_error


def affected_services(spans: SpanArrays, mask: np.ndarray, changed: np.ndarray, topology: Topology) -> list[str]:
    """Services whose spans in the faulty traces changed (the root cause and the callers above it)."""
    traces = np.unique(spans.request[mask])
    in_trace = np.isin(spans.request, traces) & changed
    return sorted({topology.services[s] for s in np.unique(spans.service[in_trace])})
