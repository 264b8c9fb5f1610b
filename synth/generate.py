"""`melt generate`: one simulation that yields all four MELT signals plus ground truth.

Pipeline: topology -> request arrivals -> span trees -> faults' own errors -> retries -> fault
effects on own work and waits -> timeouts, durations and errors resolved upward -> spans, logs,
metrics and events -> client spans above remote calls, and call metrics -> ``truth.json``. All randomness
comes from one ``numpy.random.Generator`` seeded from ``seed``, so a seed gives identical files.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from melt.core.bundle import MeltBundle
from melt.core.errors import ConfigError
from melt.core.progress import Steps, log
from melt.core.settings import SynthSettings
from melt.core.timeutil import format_duration
from synth.budget import MAX_SERVICES, available_memory, check_budget, estimate
from synth.calls import add_retries, endpoint_timeouts, in_subtrees, network_time, resolve_calls
from synth.client_spans import add_client_spans
from synth.events import benign_events, fault_events
from synth.faults import (
    CAUSE_STATUS,
    FAULT_TYPES,
    affected_services,
    apply_effects,
    changed_spans,
    fault_masks,
    fault_slot,
    lose_requests,
    own_error_causes,
    retry_roots,
    schedule_faults,
)
from synth.logs import background_logs, caller_problems, fault_logs, span_logs
from synth.metrics import call_latency, golden_signals, resource_metrics, to_long
from synth.text import random_ids
from synth.topology import Topology, load_topology, random_topology
from synth.workload import SpanArrays, arrival_times, build_templates, expand_requests

PRESETS: dict[str, dict[str, float]] = {
    # noise: metric noise scale; propagate: chance a failed call fails its caller (per hop);
    # surges: benign traffic surges per 2 h; severity: fault magnitude scale; noisy: services with
    # 3x metric noise and 4x background errors; distractors: chance of an innocent deploy just
    # before each fault; events: benign change events per hour
    "easy": {"noise": 0.5, "propagate": 0.5, "surges": 0.0, "severity": 1.4, "noisy": 0, "distractors": 0.0, "events": 1.0},
    "realistic": {"noise": 1.0, "propagate": 0.7, "surges": 1.0, "severity": 1.0, "noisy": 1, "distractors": 0.3, "events": 2.0},
    "hard": {"noise": 1.6, "propagate": 0.9, "surges": 2.0, "severity": 0.6, "noisy": 3, "distractors": 0.7, "events": 3.0},
}
BACKGROUND_ERROR_RATE = 0.002


def check(config: SynthSettings) -> None:
    """What the generator needs of its settings beyond their types and ranges (those are
    checked at load, :mod:`melt.core.settings`): a known preset and fault types, enough services,
    and room for the faults after the warm-up."""
    if config.preset not in PRESETS:
        raise ConfigError(f"synth: unknown preset '{config.preset}' (use {', '.join(PRESETS)})")
    unknown = [t for t in config.fault_types if t not in FAULT_TYPES]
    if unknown:
        raise ConfigError(f"synth: unknown fault type '{unknown[0]}' (use {', '.join(FAULT_TYPES)})")
    if config.services < 4 and config.topology_file is None:
        raise ConfigError(f"synth: --services must be at least 4, got {config.services}")
    if config.services > MAX_SERVICES and config.topology_file is None:
        raise ConfigError(f"synth: --services must be at most {MAX_SERVICES}, got {config.services}")
    if not config.fault_types and config.faults:
        raise ConfigError("synth: --fault-types names no fault type")
    if config.interval > config.duration:
        raise ConfigError(f"synth: --interval ({format_duration(config.interval)}) is longer than --duration "
                          f"({format_duration(config.duration)})")
    try:
        if config.faults:
            fault_slot(int(config.duration.value * (1 - config.warmup_fraction)), config.faults,
                       config.fault_duration.value, config.overlap)
    except ValueError as exc:
        raise ConfigError(f"synth: {exc}") from None


GENERATE_STEPS = 5  # requests, spans, logs, metrics, bundle: the marks of the progress bar


def generate(config: SynthSettings, quiet: bool = True) -> MeltBundle:
    """Simulate the system and return a validated bundle with ``truth`` (``config``: the ``synth``
    settings, e.g. ``SynthSettings.of(seed=3, duration="4h")``)."""
    check(config)
    with Steps(GENERATE_STEPS, "generate", quiet) as step:
        return _simulate(config, quiet, step)


def _simulate(config: SynthSettings, quiet: bool, step: Steps) -> MeltBundle:
    total, interval, fault_length, start = config.duration, config.interval, config.fault_duration, config.start
    preset = PRESETS[config.preset]
    rng = np.random.default_rng(config.seed)
    topology = (load_topology(config.topology_file) if config.topology_file
                else random_topology(config.services, config.endpoints_per_service, rng))
    templates = build_templates(topology)
    cost = estimate(config, topology, templates)
    check_budget(cost, available_memory())
    log(cost.text(), quiet, stage="melt generate")
    minutes = int(total / pd.Timedelta(minutes=1))
    end = start + total
    n_surges = int(rng.poisson(preset["surges"] * minutes / 120))
    surges = [(int(rng.integers(0, max(minutes - 10, 1))), int(rng.integers(4, 10)), float(rng.uniform(1.5, 2.2)))
              for _ in range(n_surges)]
    times = arrival_times(start, minutes, config.requests_per_minute, surges, rng)
    log(f"{len(topology.services)} services, {times.size} requests", quiet, stage="melt generate")
    step("requests")
    spans = expand_requests(topology, templates, times, rng)
    spans.gap_ms = network_time(spans, rng)
    try:
        faults = schedule_faults(topology, spans, config.faults, config.fault_types, start.value, end.value,
                                 config.warmup_fraction, fault_length.value, preset["severity"], config.overlap, rng)
    except ValueError as exc:
        raise ConfigError(f"synth: {exc}") from None
    timeouts = endpoint_timeouts(spans, len(topology.endpoint_name))
    noise, background = _noisy_services(topology, preset, rng)

    masks = fault_masks(spans, faults)
    cause = own_error_causes(spans, faults, masks, background, rng)
    spans, source = add_retries(spans, retry_roots(spans, cause, np.array(topology.roles), rng), topology.instances, rng)
    masks = fault_masks(spans, faults)
    cause = np.where(spans.is_retry, own_error_causes(spans, faults, masks, background, rng), cause[source])
    apply_effects(spans, faults, masks, topology, rng)
    lost = lose_requests(spans, cause)
    outcome = resolve_calls(spans, CAUSE_STATUS[cause], timeouts, preset["propagate"], rng)
    changed = [changed_spans(spans, f, m, cause, outcome.error) for f, m in zip(faults, masks, strict=True)]
    for fault_changed, hit in zip(changed, masks, strict=True):  # deadlines cancel, and retries repeat, downstream work
        fault_changed |= (outcome.cancelled | spans.is_retry) & np.isin(spans.request, np.unique(spans.request[hit]))
    label = np.any(changed, axis=0) if faults else np.zeros(spans.size, bool)

    log(f"{spans.size} spans", quiet, stage="melt generate")
    step("spans")
    trace = _span_frame(topology, spans, times, outcome.duration, outcome.start_ns, outcome.status, label, rng)
    never_ran = in_subtrees(spans, lost)  # lost requests: only the caller's client span shows them
    logs = pd.concat([
        span_logs(trace, topology, cause, caller_problems(spans, outcome), rng),
        background_logs(topology, start.value, end.value, config.background_logs_per_minute, rng),
        fault_logs(topology, faults, rng),
    ], ignore_index=True).sort_values("timestamp", kind="stable").reset_index(drop=True)
    logs = logs[~logs["span_id"].isin(trace["span_id"].to_numpy()[never_ran])].reset_index(drop=True)
    log(f"{len(logs)} log lines", quiet, stage="melt generate")
    step("logs")

    golden = golden_signals(trace[~never_ran], interval, start, end)
    resources = resource_metrics(golden, topology, faults, noise, rng)
    truth_faults = [f.to_truth(topology, affected_services(spans, m, c, topology))
                    for f, m, c in zip(faults, masks, changed, strict=True)]
    events = pd.concat([benign_events(topology, start.value, end.value, preset["events"], rng),
                        fault_events(topology, faults, preset["distractors"], rng)], ignore_index=True)
    events = events[(events["timestamp"] >= start) & (events["timestamp"] < end)]
    events = events.sort_values("timestamp", kind="stable").reset_index(drop=True)
    trace = add_client_spans(trace, spans, outcome, lost, rng)
    metrics = pd.concat([to_long(golden.join(resources)), call_latency(trace, interval)], ignore_index=True)
    metrics["label"] = _metric_labels(metrics, truth_faults)
    step("metrics")
    truth = {
        "faults": truth_faults,
        "generator": {"seed": config.seed, "preset": config.preset, "services": topology.services,
                      "roles": topology.roles, "edges": sorted(map(list, topology.service_edges())),
                      "noisy_services": [topology.services[i] for i in np.flatnonzero(noise > preset["noise"])],
                      "surges": [{"start": (start + pd.Timedelta(minutes=s)).isoformat(), "minutes": n, "factor": round(f, 2)}
                                 for s, n, f in surges]},
    }
    bundle = MeltBundle(metrics=metrics, logs=logs, traces=trace.drop(columns="_service_index"), events=events, truth=truth)
    step("bundle")
    return bundle


def _noisy_services(topology: Topology, preset: dict[str, float], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per service: metric noise scale and background error rate; a few distractor services get more of both."""
    noise = np.full(len(topology.services), preset["noise"])
    background = np.full(len(topology.services), BACKGROUND_ERROR_RATE)
    candidates = np.flatnonzero(np.array(topology.roles) == "service")
    noisy = rng.choice(candidates, size=min(int(preset["noisy"]), candidates.size), replace=False)
    noise[noisy] *= 3
    background[noisy] *= 4
    return noise, background


def _span_frame(topology: Topology, spans: SpanArrays, times: np.ndarray, duration: np.ndarray, start_ns: np.ndarray,
                status: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    trace_ids = random_ids(rng, times.size, words=2)
    span_ids = random_ids(rng, spans.size)
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
        "attr.retry": spans.is_retry.astype(int),
        "label": label.astype(int),
        "_service_index": spans.service,
    })


def _metric_labels(metrics: pd.DataFrame, faults: list[dict[str, Any]]) -> np.ndarray:
    label = np.zeros(len(metrics), dtype=int)
    for fault in faults:
        window = (metrics["timestamp"] >= pd.Timestamp(fault["start"]).floor("min")) & (metrics["timestamp"] < pd.Timestamp(fault["end"]))
        label |= (window & metrics["service"].isin(fault["affected_services"])).to_numpy().astype(int)
    return label
