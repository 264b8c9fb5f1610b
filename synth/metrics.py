"""Per-instance metrics at a fixed interval, derived from the same simulation as the spans.

Golden signals (request rate, error rate, latency p50/p95/p99) are aggregated from the spans.
Resource metrics (CPU, memory, GC pause, connection pool) follow load, with daily seasonality,
autocorrelated noise and the resource effects of faults (CPU saturation pins one pod's CPU).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from synth.faults import Fault
from synth.topology import Topology


def golden_signals(spans: pd.DataFrame, interval: pd.Timedelta, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Request rate (1/s), error rate, and latency quantiles (ms) per (service, instance, bucket)."""
    bucket = spans["start_time"].dt.floor(interval)
    grouped = spans.assign(bucket=bucket, error=spans["status_code"] >= 500).groupby(
        ["service_name", "attr.k8s.pod.name", "bucket"], observed=True, sort=True)
    stats = grouped.agg(count=("duration", "size"), errors=("error", "sum"))
    quantiles = grouped["duration"].quantile([0.5, 0.95, 0.99]).unstack()
    quantiles.columns = ["latency_p50", "latency_p95", "latency_p99"]
    # every (instance, bucket) of the period, so quiet minutes show as zero traffic rather than gaps
    pods = stats.index.droplevel("bucket").unique()
    grid_times = pd.date_range(start.floor(interval), end, freq=interval, inclusive="left", tz="UTC")
    grid = pd.MultiIndex.from_tuples([(s, p, t) for s, p in pods for t in grid_times], names=stats.index.names)
    stats = stats.reindex(grid, fill_value=0)
    wide = stats.join(quantiles)
    wide["request_rate"] = wide["count"] / interval.total_seconds()
    wide["error_rate"] = np.where(wide["count"] > 0, wide["errors"] / wide["count"].clip(lower=1), 0.0)
    return wide[["request_rate", "error_rate", "latency_p50", "latency_p95", "latency_p99"]]


def resource_metrics(golden: pd.DataFrame, topology: Topology, faults: list[Fault], noise: float,
                     rng: np.random.Generator) -> pd.DataFrame:
    """CPU %, memory MB, GC pause ms and pool usage per (service, instance, bucket)."""
    index = golden.index
    n = len(index)
    services = index.get_level_values(0).to_numpy()
    pods = index.get_level_values(1).to_numpy()
    times = index.get_level_values(2)
    service_index = pd.Index(topology.services).get_indexer(services)
    rate = golden["request_rate"].to_numpy()
    typical = pd.Series(rate).groupby(pods).transform("median").to_numpy() + 1e-3
    load = rate / typical
    # AR(1) noise per pod: consecutive rows of one pod are adjacent in the sorted index
    eps = rng.normal(0, 1, n)
    ar = pd.Series(eps).groupby(pods).transform(lambda s: s.ewm(alpha=0.3).mean()).to_numpy()
    hour = (times.hour + times.minute / 60).to_numpy()
    daily = np.sin(2 * np.pi * (hour - 9) / 24)
    base_cpu = 15 + 25 * ((service_index * 7919) % 13) / 13
    cpu = base_cpu * (0.6 + 0.4 * load) + 3 * daily + noise * 4 * ar
    memory = 400 + 60 * ((service_index * 104729) % 11) + 20 * load + noise * 8 * ar + rng.normal(0, 2, n)
    for fault in faults:
        if fault.type != "cpu_saturation":
            continue
        name = topology.services[fault.service]
        window = (times.asi8 >= fault.start - 60e9) & (times.asi8 < fault.end)
        hit = (services == name) & (pods == f"{name}-{fault.instance}") & window
        cpu[hit] = np.maximum(cpu[hit], 0) + (100 - np.maximum(cpu[hit], 0)) * 0.85
    cpu = np.clip(cpu + rng.normal(0, 0.5, n), 0, 100)
    gc_pause = np.exp(rng.normal(np.log(4 + 0.08 * cpu), 0.25))
    pool_size = 50
    pool_used = np.clip(pool_size * 0.15 * load + 2 * ar * noise + rng.normal(0, 1, n), 0, pool_size)
    return pd.DataFrame({"cpu_usage": cpu, "memory_usage": memory, "gc_pause_ms": gc_pause, "conn_pool_used": pool_used},
                        index=index)


def to_long(wide: pd.DataFrame) -> pd.DataFrame:
    """Wide (service, instance, bucket) x metric -> the bundle's long metric format."""
    long = wide.stack(future_stack=True).rename("value").reset_index()
    long.columns = ["service", "instance", "timestamp", "metric", "value"]
    return long[["timestamp", "service", "instance", "metric", "value"]]
