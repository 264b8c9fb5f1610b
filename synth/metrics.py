"""Per-instance metrics at a fixed interval, derived from the same simulation as the spans.

Golden signals (request rate, error rate, latency p50/p95/p99) are aggregated from the spans.
Resource metrics (CPU, memory, GC pause, connection pool, queue depth) follow load, with daily
seasonality, autocorrelated noise and the resource effects of faults: CPU saturation pins one pod's
CPU, a memory leak grows the heap and GC pauses until the OOM kill, pool exhaustion pins the pool.
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


def call_latency(trace: pd.DataFrame, interval: pd.Timedelta) -> pd.DataFrame:
    """Median call latency per call edge and bucket, in seconds, as a mesh or RPC library reports it:
    ``rpc.client.duration.p50`` measured by the caller (``peer`` = the callee, from its client spans)
    and ``rpc.server.duration.p50`` measured by the callee (``peer`` = the caller, from the server
    spans right below a client span)."""
    client = trace[trace["span_kind"].eq("client").to_numpy()]
    rows = pd.Index(trace["span_id"]).get_indexer(client["span_id"])
    server_of = pd.Series(np.arange(len(trace)), index=trace["parent_span_id"].to_numpy())
    below = server_of[~server_of.index.duplicated()].reindex(client["span_id"].to_numpy()).to_numpy()
    bucket = trace["start_time"].dt.floor(interval).to_numpy()
    caller = client["service_name"].to_numpy()
    served = ~np.isnan(below)
    callee = np.full(len(client), None, dtype=object)
    callee[served] = trace["service_name"].to_numpy()[below[served].astype(int)]
    # a lost call's callee: the one the same caller reaches through the same operation
    known = pd.Series(callee).groupby([caller, client["span_name"].to_numpy()]).transform("first").to_numpy()
    callee = np.where(served, callee, known)
    sides = [pd.DataFrame({"timestamp": bucket[rows], "service": caller, "peer": callee,
                           "metric": "rpc.client.duration.p50", "value": client["duration"].to_numpy() / 1000.0})]
    server = below[served].astype(int)
    sides.append(pd.DataFrame({"timestamp": bucket[server], "service": callee[served], "peer": caller[served],
                               "metric": "rpc.server.duration.p50", "value": trace["duration"].to_numpy()[server] / 1000.0}))
    frame = pd.concat(sides, ignore_index=True).dropna(subset=["peer"])
    medians = frame.groupby(["timestamp", "service", "peer", "metric"], observed=True)["value"].median().reset_index()
    return medians[["timestamp", "service", "metric", "value", "peer"]]


def resource_metrics(golden: pd.DataFrame, topology: Topology, faults: list[Fault], noise: np.ndarray,
                     rng: np.random.Generator) -> pd.DataFrame:
    """CPU %, memory MB, GC pause ms, connection-pool use and queue depth per (service, instance, bucket).

    Args:
        noise: per service, the scale of its metric noise (noisy services are distractors).
    """
    index = golden.index
    n = len(index)
    services = index.get_level_values(0).to_numpy()
    pods = index.get_level_values(1).to_numpy()
    times = pd.DatetimeIndex(index.get_level_values(2)).as_unit("ns")
    t_ns = times.asi8
    service_index = pd.Index(topology.services).get_indexer(services)
    scale = noise[service_index]
    rate = golden["request_rate"].to_numpy()
    typical = pd.Series(rate).groupby(pods).transform("median").to_numpy() + 1e-3
    load = rate / typical
    # AR(1) noise per pod: consecutive rows of one pod are adjacent in the sorted index
    eps = rng.normal(0, 1, n)
    ar = pd.Series(eps).groupby(pods).transform(lambda s: s.ewm(alpha=0.3).mean()).to_numpy()
    hour = (times.hour + times.minute / 60).to_numpy()
    daily = np.sin(2 * np.pi * (hour - 9) / 24)
    base_cpu = 15 + 25 * ((service_index * 7919) % 13) / 13
    cpu = base_cpu * (0.6 + 0.4 * load) + 3 * daily + scale * 4 * ar
    memory = 400 + 60 * ((service_index * 104729) % 11) + 20 * load + scale * 8 * ar + rng.normal(0, 2, n)
    gc_factor = np.ones(n)
    pool_size = np.where(np.array(topology.roles)[service_index] == "db", 100, 50)
    pool_share = np.clip(0.15 * load + 0.04 * scale * ar + rng.normal(0, 0.02, n), 0, 1)
    for fault in faults:
        name = topology.services[fault.service]
        window = (t_ns >= fault.start - 60_000_000_000) & (t_ns < fault.end)
        pod = (pods == f"{name}-{fault.instance}") if fault.instance is not None else services == name
        hit = pod & window
        if fault.type == "cpu_saturation":
            cpu[hit] = np.maximum(cpu[hit], 0) + (100 - np.maximum(cpu[hit], 0)) * 0.85
        elif fault.type == "memory_leak":  # heap climbs to the limit, GC thrashes, then the OOM kill resets it
            progress = np.clip((t_ns - fault.start) / (fault.leak_end - fault.start), 0, 1)
            leaking = pod & (t_ns >= fault.start) & (t_ns < fault.leak_end)
            memory[leaking] += 1600 * progress[leaking]
            gc_factor[leaking] *= 1 + 8 * progress[leaking] ** 2
            cpu[leaking] += 20 * progress[leaking]
            restarting = pod & (t_ns >= fault.leak_end) & (t_ns < fault.end)
            memory[restarting] *= 0.6
        elif fault.type == "pool_exhaustion":  # the database's pool is pinned; callers queue for it
            pool_share[hit] = np.maximum(pool_share[hit], rng.uniform(0.97, 1.0, int(hit.sum())))
    cpu = np.clip(cpu + rng.normal(0, 0.5, n), 0, 100)
    gc_pause = np.exp(rng.normal(np.log((4 + 0.08 * cpu) * gc_factor), 0.25))
    # Little's law: requests in flight = arrival rate x time in system
    queue_depth = np.maximum(rate * np.nan_to_num(golden["latency_p50"].to_numpy()) / 1000 * (1 + 0.05 * scale * ar), 0)
    return pd.DataFrame({"cpu_usage": cpu, "memory_usage": memory, "gc_pause_ms": gc_pause,
                         "conn_pool_used": np.round(pool_share * pool_size), "queue_depth": queue_depth}, index=index)


def to_long(wide: pd.DataFrame) -> pd.DataFrame:
    """Wide (service, instance, bucket) x metric -> the bundle's long metric format."""
    long = wide.stack(future_stack=True).rename("value").reset_index()
    long.columns = ["service", "instance", "timestamp", "metric", "value"]
    return long[["timestamp", "service", "instance", "metric", "value"]]
