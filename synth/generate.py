"""`melt generate`: one simulation that yields all four MELT signals plus ground truth.

Pipeline: topology -> request arrivals -> span trees -> fault effects on own work and status ->
durations aggregated upward -> spans, logs, metrics and events -> ``truth.json``. All randomness
comes from one ``numpy.random.Generator`` seeded from ``seed``, so a seed gives identical files.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from melt.bundle import MeltBundle
from melt.errors import ConfigError
from melt.timeutil import parse_duration
from synth.faults import (
    FAULT_TYPES,
    affected_services,
    apply_self_time,
    fault_masks,
    schedule_faults,
    status_codes,
)
from synth.logs import background_logs, span_logs
from synth.metrics import golden_signals, resource_metrics, to_long
from synth.text import random_ids
from synth.topology import Topology, load_topology, random_topology
from synth.workload import arrival_times, build_templates, durations_and_starts, expand_requests

PRESETS: dict[str, dict[str, float]] = {
    # noise: scale of metric noise; propagate: per-hop error propagation; surges: benign surges per 2h
    "easy": {"noise": 0.5, "propagate": 0.5, "surges": 0.0},
    "realistic": {"noise": 1.0, "propagate": 0.7, "surges": 1.0},
    "hard": {"noise": 1.6, "propagate": 0.9, "surges": 2.0},
}


@dataclass
class SynthConfig:
    """Generator settings; the fields mirror the ``synth:`` section of config.yaml."""

    seed: int = 7
    services: int = 12
    endpoints_per_service: int = 3
    duration: str = "2h"
    interval: str = "1m"
    start: str = "2026-01-05T00:00:00Z"
    requests_per_minute: float = 60.0
    faults: int = 3
    fault_types: list[str] = field(default_factory=lambda: list(FAULT_TYPES))
    fault_duration: str = "10m"
    warmup_fraction: float = 0.4
    preset: str = "realistic"
    background_logs_per_minute: float = 20.0
    topology_file: str | None = None

    @classmethod
    def from_config(cls, section: dict[str, Any], **overrides: Any) -> SynthConfig:
        values = {**section, **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**values)

    def check(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"synth: unknown preset '{self.preset}' (use {', '.join(PRESETS)})")
        unknown = [t for t in self.fault_types if t not in FAULT_TYPES]
        if unknown:
            raise ConfigError(f"synth: unknown fault type '{unknown[0]}' (use {', '.join(FAULT_TYPES)})")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError("synth: warmup_fraction must be in [0, 1)")
        if self.services < 4 and self.topology_file is None:
            raise ConfigError(f"synth: --services must be at least 4, got {self.services}")
        if self.faults < 0 or self.requests_per_minute <= 0:
            raise ConfigError("synth: faults must be >= 0 and requests_per_minute > 0")


def _progress(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"[melt generate] {message}", file=sys.stderr, flush=True)


def generate(config: SynthConfig, quiet: bool = True) -> MeltBundle:
    """Simulate the system and return a validated bundle with ``truth``."""
    config.check()
    try:
        total, interval = parse_duration(config.duration), parse_duration(config.interval)
        fault_length = parse_duration(config.fault_duration)
        start = pd.Timestamp(config.start).tz_convert("UTC") if pd.Timestamp(config.start).tzinfo else pd.Timestamp(config.start, tz="UTC")
    except ValueError as exc:
        raise ConfigError(f"synth: {exc}") from None
    preset = PRESETS[config.preset]
    rng = np.random.default_rng(config.seed)
    topology = (load_topology(config.topology_file) if config.topology_file
                else random_topology(config.services, config.endpoints_per_service, rng))
    templates = build_templates(topology)
    minutes = int(total / pd.Timedelta(minutes=1))
    end = start + total
    n_surges = int(rng.poisson(preset["surges"] * minutes / 120))
    surges = [(int(rng.integers(0, max(minutes - 10, 1))), int(rng.integers(4, 10)), float(rng.uniform(1.5, 2.2)))
              for _ in range(n_surges)]
    times = arrival_times(start, minutes, config.requests_per_minute, surges, rng)
    _progress(f"{len(topology.services)} services, {times.size} requests", quiet)
    spans = expand_requests(topology, templates, times, rng)
    faults = schedule_faults(topology, config.faults, config.fault_types, start.value, end.value,
                             config.warmup_fraction, fault_length.value, rng)
    masks = fault_masks(spans, faults)
    apply_self_time(spans, faults, masks, topology)
    duration, start_ns = durations_and_starts(spans)
    status, own_error = status_codes(spans, faults, masks, preset["propagate"], rng)

    changed_by_fault = []
    for fault, hit in zip(faults, masks, strict=True):
        changed = hit & own_error if fault.type == "error_burst" else hit.copy()
        for d in range(int(spans.depth.max()), 0, -1):  # callers of a changed span changed too
            level = np.flatnonzero((spans.depth == d) & changed & ~spans.is_async)
            if fault.type == "error_burst":
                level = level[status[spans.parent[level]] >= 500]
            changed[spans.parent[level]] = True
        changed_by_fault.append(changed)
    label = np.any(changed_by_fault, axis=0) if faults else np.zeros(spans.request.size, bool)

    _progress(f"{spans.request.size} spans", quiet)
    trace = _span_frame(topology, spans, times, duration, start_ns, status, label, rng)
    failed_child, slow_child, slow_limit = _child_problems(spans, status, duration)
    logs = pd.concat([
        span_logs(trace, topology, own_error, failed_child, slow_child, slow_limit, rng),
        background_logs(topology, start.value, end.value, config.background_logs_per_minute, rng),
    ], ignore_index=True).sort_values("timestamp", kind="stable").reset_index(drop=True)
    _progress(f"{len(logs)} log lines", quiet)

    golden = golden_signals(trace, interval, start, end)
    resources = resource_metrics(golden, topology, faults, preset["noise"], rng)
    metrics = to_long(golden.join(resources))
    truth_faults = [f.to_truth(topology, affected_services(spans, m, c, topology))
                    for f, m, c in zip(faults, masks, changed_by_fault, strict=True)]
    metrics["label"] = _metric_labels(metrics, truth_faults)
    events = _events(topology, start, end, rng)
    truth = {
        "faults": truth_faults,
        "generator": {"seed": config.seed, "preset": config.preset, "services": topology.services,
                      "roles": topology.roles, "edges": sorted(map(list, topology.service_edges())),
                      "surges": [{"start": (start + pd.Timedelta(minutes=s)).isoformat(), "minutes": n, "factor": round(f, 2)}
                                 for s, n, f in surges]},
    }
    return MeltBundle(metrics=metrics, logs=logs, traces=trace.drop(columns="_service_index"), events=events, truth=truth)


def _span_frame(topology: Topology, spans, times, duration, start_ns, status, label, rng) -> pd.DataFrame:
    trace_ids = random_ids(rng, times.size, words=2)
    span_ids = random_ids(rng, spans.request.size)
    services = np.array(topology.services)[spans.service]
    names = np.array(topology.endpoint_name)[spans.endpoint]
    method = np.where(np.char.startswith(names.astype(str), "GET"), "GET", "POST")
    kind = np.where(spans.is_async, "consumer", "server")
    return pd.DataFrame({
        "trace_id": trace_ids[spans.request],
        "span_id": span_ids,
        "parent_span_id": np.where(spans.parent >= 0, span_ids[np.maximum(spans.parent, 0)], None),
        "span_name": names,
        "service_name": services,
        "start_time": pd.to_datetime(start_ns, utc=True),
        "duration": np.round(duration, 3),
        "status_code": status,
        "span_kind": kind,
        "attr.http.method": method,
        "attr.http.response.status_code": status,
        "attr.k8s.pod.name": np.char.add(np.char.add(services.astype(str), "-"), spans.instance.astype(str)),
        "label": label.astype(int),
        "_service_index": spans.service,
    })


def _child_problems(spans, status: np.ndarray, duration: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per span: the service of a failed sync child and of an abnormally slow sync child (or -1)."""
    n = spans.request.size
    failed_child = np.full(n, -1)
    slow_child = np.full(n, -1)
    slow_limit = np.zeros(n)
    child = np.flatnonzero((spans.parent >= 0) & ~spans.is_async)
    failed = child[status[child] >= 500]
    failed_child[spans.parent[failed]] = spans.service[failed]
    typical = pd.Series(duration).groupby(spans.endpoint).transform("median").to_numpy()
    limit = np.maximum(5 * typical, typical + 50)
    slow = child[duration[child] > limit[child]]
    slow_child[spans.parent[slow]] = spans.service[slow]
    slow_limit[spans.parent[slow]] = limit[slow]
    return failed_child, slow_child, slow_limit


def _metric_labels(metrics: pd.DataFrame, faults: list[dict[str, Any]]) -> np.ndarray:
    label = np.zeros(len(metrics), dtype=int)
    for fault in faults:
        window = (metrics["timestamp"] >= pd.Timestamp(fault["start"]).floor("min")) & (metrics["timestamp"] < pd.Timestamp(fault["end"]))
        label |= (window & metrics["service"].isin(fault["affected_services"])).to_numpy().astype(int)
    return label


def _events(topology: Topology, start: pd.Timestamp, end: pd.Timestamp, rng: np.random.Generator) -> pd.DataFrame:
    """Benign change events: deploys, config changes and scaling, spread over the period."""
    hours = max((end - start) / pd.Timedelta(hours=1), 1.0)
    n = int(rng.poisson(2 * hours)) + 1
    services = np.array(topology.services)[rng.integers(0, len(topology.services), n)]
    kind = rng.choice(np.array(["deploy", "config_change", "scale"]), n, p=[0.5, 0.3, 0.2])
    version = np.char.add("1.", rng.integers(0, 30, n).astype(str))
    message = np.where(kind == "deploy", np.char.add("Deployed version ", version),
                       np.where(kind == "config_change", "Updated configmap settings", "Scaled replicas"))
    times = pd.to_datetime(np.sort(rng.integers(start.value, end.value, n)), utc=True)
    return pd.DataFrame({"timestamp": times, "service": services, "kind": kind, "message": message,
                         "attributes": '{"benign": true}'})
