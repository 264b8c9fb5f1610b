"""Log lines emitted by spans (request, error, slow-call and failed-call templates) and background logs.

Templates mimic Java/Go service logs (TrainTicket, Online Boutique) with variable parts that a
template miner must mask: ids, durations, IPs, counts. Every span line carries trace and span id.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from synth.text import random_ids, render
from synth.topology import Topology

REQUEST_TEMPLATES = {
    "gateway": "{method} {path} from {ip}:{port} status={status} took {ms} ms",
    "frontend": "Rendered page {path} for session {session} in {ms} ms",
    "service": "Handling {op} request id={rid} user={user} completed in {ms} ms",
    "db": "Query {op} on table {table} returned {rows} rows in {ms} ms",
    "cache": "Cache {op} key=user:{user} hit={hit} in {ms} ms",
    "queue": "Published message {rid} to topic {table} partition {rows}",
}
EXCEPTIONS = [
    "Exception in {op}: java.lang.IllegalStateException: record {rid} not found",
    "Exception in {op}: java.lang.NullPointerException at {svc}.handle(line {rows})",
    "Unhandled error in {op}: java.sql.SQLException: deadlock detected on table {table}",
]
FAILED_CALL = "Call to {child} failed with HTTP 500 after {ms} ms, request id={rid}"
SLOW_CALL = "Slow call to {child}: {ms} ms exceeds {limit} ms, request id={rid}"
BACKGROUND = [
    ("INFO", "Health check passed in {ms} ms"),
    ("INFO", "Connection pool stats active={rows} idle={port}"),
    ("INFO", "GC pause {ms} ms, heap used {rows} MB"),
    ("INFO", "Scheduled job sync-{table} completed in {ms} ms"),
    ("WARN", "Retrying connection to {ip}:{port} (attempt {rows})"),
]
TABLES = np.array(["orders", "users", "payments", "items", "routes", "tickets", "sessions"])


def _variables(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    ips = [rng.integers(1, 255, n).astype(str) for _ in range(4)]
    return {
        "ip": np.char.add(np.char.add(np.char.add(ips[0], "."), np.char.add(ips[1], ".")), np.char.add(np.char.add(ips[2], "."), ips[3])),
        "port": rng.integers(1024, 65535, n),
        "rid": random_ids(rng, n),
        "user": rng.integers(1, 50_000, n),
        "session": random_ids(rng, n),
        "rows": rng.integers(0, 400, n),
        "table": rng.choice(TABLES, n),
        "hit": rng.choice(np.array(["true", "false"]), n, p=[0.85, 0.15]),
    }


def span_logs(spans: pd.DataFrame, topology: Topology, own_error: np.ndarray, failed_child: np.ndarray,
              slow_child: np.ndarray, slow_limit: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Lines for each span: one request line, plus an ERROR for own errors, a WARN per failed or slow child.

    Args:
        spans: the span frame (one row per span, aligned with the arrays).
        own_error: the span itself raised the error.
        failed_child: service index of a failed synchronous child, or -1.
        slow_child: service index of an abnormally slow child, or -1; ``slow_limit`` its limit in ms.
    """
    n = len(spans)
    roles = np.array(topology.roles)[spans["_service_index"].to_numpy()]
    start = spans["start_time"].astype("int64").to_numpy()  # ns
    ms = np.round(spans["duration"].to_numpy(), 1)
    var = _variables(rng, n)
    var.update(ms=ms, op=spans["span_name"].to_numpy(), svc=spans["service_name"].to_numpy(),
               method=spans["attr.http.method"].to_numpy(), path=spans["span_name"].str.split(" ").str[-1].to_numpy(),
               status=spans["status_code"].to_numpy())
    frames = []

    def emit(mask: np.ndarray, level: str, template: str, at_fraction: float, **extra: np.ndarray) -> None:
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return
        columns = {k: np.asarray(v)[idx] for k, v in {**var, **extra}.items() if "{" + k + "}" in template}
        offset = (spans["duration"].to_numpy()[idx] * at_fraction * 1e6).astype("int64")
        frames.append(pd.DataFrame({
            "_row": idx, "_order": at_fraction,
            "timestamp": pd.to_datetime(start[idx] + offset, utc=True),
            "level": level,
            "message": render(template, **columns).to_numpy(),
        }))

    for role, template in REQUEST_TEMPLATES.items():
        emit(roles == role, "INFO", template, 0.9)
    exception_choice = spans["_service_index"].to_numpy() % len(EXCEPTIONS)
    for k, template in enumerate(EXCEPTIONS):
        emit(own_error & (exception_choice == k), "ERROR", template, 0.5)
    services = np.array(topology.services)
    emit(failed_child >= 0, "ERROR", FAILED_CALL, 0.95, child=services[np.maximum(failed_child, 0)])
    emit(slow_child >= 0, "WARN", SLOW_CALL, 0.95, child=services[np.maximum(slow_child, 0)],
         limit=np.round(slow_limit, 0).astype(int))
    logs = pd.concat(frames, ignore_index=True)
    rows = logs["_row"].to_numpy()
    logs["service"] = spans["service_name"].to_numpy()[rows]
    logs["instance"] = spans["attr.k8s.pod.name"].to_numpy()[rows]
    logs["trace_id"] = spans["trace_id"].to_numpy()[rows]
    logs["span_id"] = spans["span_id"].to_numpy()[rows]
    logs["label"] = spans["label"].to_numpy()[rows]
    return logs.sort_values(["timestamp", "_row", "_order"], kind="stable").drop(columns=["_row", "_order"])


def background_logs(topology: Topology, start_ns: int, end_ns: int, per_minute: float,
                    rng: np.random.Generator) -> pd.DataFrame:
    """Logs that belong to no trace: health checks, pool stats, GC, jobs, retries."""
    minutes = (end_ns - start_ns) / 6e10
    n = int(rng.poisson(per_minute * minutes))
    service = rng.integers(0, len(topology.services), n)
    kind = rng.choice(len(BACKGROUND), n, p=[0.4, 0.2, 0.2, 0.15, 0.05])
    var = _variables(rng, n)
    var["ms"] = np.round(rng.lognormal(1.0, 0.6, n), 1)
    frames = []
    for k, (level, template) in enumerate(BACKGROUND):
        idx = np.flatnonzero(kind == k)
        columns = {name: np.asarray(v)[idx] for name, v in var.items() if "{" + name + "}" in template}
        frames.append(pd.DataFrame({"_i": idx, "level": level, "message": render(template, **columns).to_numpy()}))
    logs = pd.concat(frames, ignore_index=True).sort_values("_i").drop(columns="_i")
    logs["timestamp"] = pd.to_datetime(np.sort(rng.integers(start_ns, end_ns, n)), utc=True)
    services = np.array(topology.services)
    logs["service"] = services[service]
    logs["instance"] = services[service] + "-" + (rng.random(n) * topology.instances[service]).astype(int).astype(str)
    logs["trace_id"] = None
    logs["span_id"] = None
    logs["label"] = 0
    return logs
