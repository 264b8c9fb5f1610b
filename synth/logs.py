"""Log lines emitted by spans (request, own error, retry, timeout, slow and failed calls), by faults
outside requests (GC, OOM, restarts), and background logs.

Templates mimic Java/Go service logs (TrainTicket, Online Boutique) with variable parts that a
template miner must mask: ids, durations, IPs, counts. Every span line carries trace and span id.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from synth.calls import CallOutcome
from synth.faults import CAUSE_BACKGROUND, CAUSE_DEPLOY, CAUSE_DOWN, CAUSE_EXCEPTION, CAUSE_POOL, Fault
from synth.text import random_ids, render
from synth.topology import Topology
from synth.workload import SpanArrays

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
OWN_ERROR = {  # by synth.faults cause; CAUSE_BACKGROUND and CAUSE_EXCEPTION use EXCEPTIONS
    CAUSE_DEPLOY: "Exception in {op}: java.lang.NoSuchMethodError: 'java.lang.String {svc}.dto.Request.getTenant()'",
    CAUSE_POOL: "FATAL: sorry, too many clients already (connection from {ip}:{port})",
    CAUSE_DOWN: "upstream connect error or disconnect/reset before headers. reset reason: connection failure, request id={rid}",
}
FAILED_CALL = "Call to {child} failed with HTTP {code} after {ms} ms, request id={rid}"
TIMED_OUT_CALL = "Timed out after {limit} ms waiting for {child}, request id={rid}"
RETRIED_CALL = "Retrying call to {child} after HTTP {code} (attempt 2 of 2), request id={rid}"
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


def caller_problems(spans: SpanArrays, outcome: CallOutcome) -> dict[str, np.ndarray]:
    """Per span, what went wrong with its synchronous children, as the caller would log it.

    Keys: ``failed`` (span index of a failed child or -1), ``timed_out`` (a child it gave up on),
    ``retried`` (a failed child it retried), ``slow`` (an abnormally slow child) and ``slow_limit``.
    """
    n = spans.size
    child = np.flatnonzero((spans.parent >= 0) & ~spans.is_async)
    problems = {name: np.full(n, -1, dtype=np.int64) for name in ("timed_out", "retried", "slow")}
    problems["failed"] = outcome.failed_child
    for name, flag in (("timed_out", outcome.timed_out), ("retried", spans.retried)):
        rows = child[flag[child]]
        problems[name][spans.parent[rows]] = rows
    waited = outcome.duration + spans.gap_ms  # what the caller saw, network and pool waits included
    typical = pd.Series(waited).groupby(spans.endpoint).transform("median").to_numpy()
    limit = np.maximum(5 * typical, typical + 50)
    slow = child[(waited[child] > limit[child]) & ~outcome.timed_out[child]]
    problems["slow"][spans.parent[slow]] = slow
    problems["slow_limit"] = np.zeros(n)
    problems["slow_limit"][spans.parent[slow]] = limit[slow]
    problems["slow_ms"] = np.zeros(n)
    problems["slow_ms"][spans.parent[slow]] = waited[slow]
    return problems


def span_logs(spans: pd.DataFrame, topology: Topology, cause: np.ndarray, problems: dict[str, np.ndarray],
              rng: np.random.Generator) -> pd.DataFrame:
    """Lines for each span: a request line; an ERROR for its own error; a line per problem child.

    Args:
        spans: the span frame (one row per span, aligned with the arrays).
        cause: why the span raised an error itself (``synth.faults.CAUSE_*``).
        problems: from ``caller_problems``.
    """
    n = len(spans)
    roles = np.array(topology.roles)[spans["_service_index"].to_numpy()]
    start = spans["start_time"].astype("int64").to_numpy()  # ns
    ms = np.round(spans["duration"].to_numpy(), 1)
    services = spans["service_name"].to_numpy()
    status = spans["status_code"].to_numpy()
    var = _variables(rng, n)
    var.update(ms=ms, op=spans["span_name"].to_numpy(), svc=services,
               method=spans["attr.http.method"].to_numpy(), path=spans["span_name"].str.split(" ").str[-1].to_numpy(),
               status=status)
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
    generic = np.isin(cause, [CAUSE_BACKGROUND, CAUSE_EXCEPTION])
    for k, template in enumerate(EXCEPTIONS):
        emit(generic & (exception_choice == k), "ERROR", template, 0.5)
    for code, template in OWN_ERROR.items():
        emit(cause == code, "FATAL" if code == CAUSE_POOL else "ERROR", template, 0.5)

    def child_columns(name: str) -> dict[str, np.ndarray]:
        child = np.maximum(problems[name], 0)
        return {"child": services[child], "code": status[child]}

    emit(problems["retried"] >= 0, "WARN", RETRIED_CALL, 0.6, **child_columns("retried"))
    emit((problems["failed"] >= 0) & (problems["timed_out"] < 0), "ERROR", FAILED_CALL, 0.95, **child_columns("failed"))
    timeouts = np.round(spans["duration"].to_numpy()[np.maximum(problems["timed_out"], 0)]).astype(int)
    emit(problems["timed_out"] >= 0, "ERROR", TIMED_OUT_CALL, 0.95, limit=timeouts, **child_columns("timed_out"))
    emit(problems["slow"] >= 0, "WARN", SLOW_CALL, 0.95, limit=np.round(problems["slow_limit"]).astype(int),
         ms=np.round(problems["slow_ms"], 1), **child_columns("slow"))
    logs = pd.concat(frames, ignore_index=True)
    rows = logs["_row"].to_numpy()
    logs["service"] = services[rows]
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


def fault_logs(topology: Topology, faults: list[Fault], rng: np.random.Generator) -> pd.DataFrame:
    """Lines a fault writes outside any request: thread-starvation warnings of a CPU-starved pod, GC
    warnings and the OOM kill of a leaking pod, the start-up banner after its restart, the version banner of a bad deploy, refused connections of
    an exhausted database. All are labelled 1."""
    rows: list[tuple[int, int, str, str, str]] = []  # time, service, instance, level, message
    for fault in faults:
        name = topology.services[fault.service]
        pod = f"{name}-{fault.instance if fault.instance is not None else 0}"
        if fault.type == "memory_leak":
            for t in range(fault.start, fault.leak_end, 15_000_000_000):
                used = 70 + 29 * (t - fault.start) / (fault.leak_end - fault.start)
                pause = 40 + 900 * ((t - fault.start) / (fault.leak_end - fault.start)) ** 2 * rng.lognormal(0, 0.2)
                rows.append((t, fault.service, pod, "WARN", f"GC overhead high: pause {pause:.0f} ms, heap {used:.0f}% used"))
            rows.append((fault.leak_end - 1_000_000, fault.service, pod, "ERROR",
                         "java.lang.OutOfMemoryError: Java heap space"))
            rows.append((fault.end, fault.service, pod, "INFO", f"Started {name} in {rng.uniform(20, 40):.1f} seconds"))
        elif fault.type == "cpu_saturation":  # HikariCP's housekeeper notices a starved JVM
            for t in range(fault.start + 20_000_000_000, fault.end, 30_000_000_000):
                rows.append((t, fault.service, pod, "WARN", "HikariPool-1 - Thread starvation or clock leap detected "
                             f"(housekeeper delta={rng.integers(45, 90)}s{rng.integers(100, 999)}ms)."))
        elif fault.type == "bad_deploy":
            rows.append((fault.start, fault.service, pod, "INFO", f"Starting {name} build {rng.integers(1000, 9999)}"))
        elif fault.type == "pool_exhaustion":
            for t in range(fault.start, fault.end, 20_000_000_000):
                rows.append((t, fault.service, pod, "WARN", f"max_connections reached: {rng.integers(95, 101)} of 100 in use"))
    if not rows:
        return pd.DataFrame(columns=["timestamp", "level", "message", "service", "instance", "trace_id", "span_id", "label"])
    times, service, pod, level, message = zip(*rows, strict=True)
    return pd.DataFrame({"timestamp": pd.to_datetime(np.array(times, dtype=np.int64), utc=True), "level": level,
                         "message": message, "service": np.array(topology.services)[list(service)], "instance": pod,
                         "trace_id": None, "span_id": None, "label": 1})
