"""A bundle as the OTLP/HTTP requests an instrumented system would send, and a sender for them.

Tests and benchmarks feed `melt serve` with it; an operator can replay a recorded bundle into a
running server. Spans become ``ExportTraceServiceRequest`` messages (resource ``service.name`` and
``k8s.pod.name``; ``attr.*`` columns as span attributes; HTTP status as
``http.response.status_code``), log lines ``ExportLogsServiceRequest`` messages (severity number
from the level), metric points gauge data points of ``ExportMetricsServiceRequest`` messages
(a ``peer`` becomes the point attribute ``peer``). Requests come in event-time order, one
``chunk`` of time at a time, each signal cut to ``batch`` items per request, as an SDK's batch
processor sends them. Events (deploys and the like) have no OTLP signal and are not sent.
"""

from __future__ import annotations

import gzip as gzip_module
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from melt.core.bundle import TIME_COLUMNS, MeltBundle

PROTOBUF = "application/x-protobuf"
LEVEL_NUMBER = {"TRACE": 1, "DEBUG": 5, "INFO": 9, "WARN": 13, "WARNING": 13, "ERROR": 17, "FATAL": 21}
CHUNK = pd.Timedelta("10s")
SPAN_KIND = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}


@dataclass(frozen=True)
class Request:
    """One OTLP/HTTP request: its path, protobuf body, and the newest event time it carries."""

    path: str
    body: bytes
    rows: int
    newest: pd.Timestamp


def otlp_requests(bundle: MeltBundle, *, batch: int = 512, chunk: pd.Timedelta = CHUNK) -> Iterator[Request]:
    """The bundle's spans, logs and metric points as OTLP/HTTP requests, in event-time order."""
    frames = {name: getattr(bundle, name) for name in ("traces", "logs", "metrics")}
    frames = {name: f.sort_values(TIME_COLUMNS[name], kind="stable") for name, f in frames.items()
              if f is not None and len(f)}
    if not frames:
        return
    low = min(f[TIME_COLUMNS[n]].iloc[0] for n, f in frames.items()).floor(chunk)
    high = max(f[TIME_COLUMNS[n]].iloc[-1] for n, f in frames.items())
    edges = {n: _nanos(f[TIME_COLUMNS[n]]) for n, f in frames.items()}
    start = low
    while start <= high:
        end = start + chunk
        for name, frame in frames.items():
            times = edges[name]
            first, last = np.searchsorted(times, start.value), np.searchsorted(times, end.value)
            for offset in range(first, last, batch):
                part = frame.iloc[offset: min(offset + batch, last)]
                yield ENCODERS[name](part)
        start = end


def _resource(service: str, instance: str | None) -> object:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    attributes = [KeyValue(key="service.name", value=AnyValue(string_value=str(service)))]
    if instance is not None and instance == instance:
        attributes.append(KeyValue(key="k8s.pod.name", value=AnyValue(string_value=str(instance))))
    return Resource(attributes=attributes)


def _any(value: object) -> object:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    if isinstance(value, bool | np.bool_):
        return AnyValue(bool_value=bool(value))
    if isinstance(value, int | np.integer):
        return AnyValue(int_value=int(value))
    if isinstance(value, float | np.floating):
        return AnyValue(double_value=float(value))
    return AnyValue(string_value=str(value))


def _nanos(values: pd.Series) -> np.ndarray:
    return values.dt.tz_convert("UTC").astype("int64").to_numpy() if len(values) else np.zeros(0, dtype=np.int64)


def _spans(frame: pd.DataFrame) -> Request:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

    starts = _nanos(frame["start_time"])
    ends = starts + (frame["duration"].fillna(0).to_numpy(float) * 1e6).astype(np.int64)
    attr_columns = [c for c in frame.columns if c.startswith("attr.") and c != "attr.k8s.pod.name"]
    pods = frame["attr.k8s.pod.name"] if "attr.k8s.pod.name" in frame.columns else pd.Series(None, index=frame.index)
    request = ExportTraceServiceRequest()
    groups: dict[tuple[str, object], list[Span]] = {}
    attr_values = {c: frame[c].tolist() for c in attr_columns}  # one list per column, not a lookup per cell
    pod_values = pods.tolist()
    for i, record in enumerate(frame.to_dict("records")):
        attributes = [KeyValue(key=c[5:], value=_any(values[i])) for c, values in attr_values.items()
                      if pd.notna(values[i])]
        status_code = record.get("status_code")
        if pd.notna(status_code) and "attr.http.response.status_code" not in frame.columns:
            attributes.append(KeyValue(key="http.response.status_code", value=_any(int(status_code))))
        failed = pd.notna(status_code) and int(status_code) >= 500
        span = Span(trace_id=bytes.fromhex(record["trace_id"]), span_id=bytes.fromhex(record["span_id"]),
                    parent_span_id=bytes.fromhex(record["parent_span_id"]) if isinstance(record.get("parent_span_id"), str)
                    and record["parent_span_id"] else b"",
                    name=str(record.get("span_name") or ""), kind=SPAN_KIND.get(str(record.get("span_kind")), 0),
                    start_time_unix_nano=int(starts[i]), end_time_unix_nano=int(ends[i]), attributes=attributes,
                    status=Status(code=2 if failed else 0))
        pod = pod_values[i]
        groups.setdefault((str(record["service_name"]), pod if pd.notna(pod) else None), []).append(span)
    for (service, pod), spans in groups.items():
        request.resource_spans.append(ResourceSpans(resource=_resource(service, pod), scope_spans=[ScopeSpans(spans=spans)]))
    return Request("/v1/traces", request.SerializeToString(), len(frame), frame["start_time"].iloc[-1])


def _logs(frame: pd.DataFrame) -> Request:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

    stamps = _nanos(frame["timestamp"])
    request = ExportLogsServiceRequest()
    groups: dict[tuple[str, object], list[LogRecord]] = {}
    instances = frame["instance"] if "instance" in frame.columns else pd.Series(None, index=frame.index)
    trace_ids = frame["trace_id"] if "trace_id" in frame.columns else pd.Series(None, index=frame.index)
    span_ids = frame["span_id"] if "span_id" in frame.columns else pd.Series(None, index=frame.index)
    levels, messages, services = frame["level"].astype(str).str.upper(), frame["message"].astype(str), frame["service"]
    for i in range(len(frame)):
        trace_id, span_id = trace_ids.iat[i], span_ids.iat[i]
        record = LogRecord(time_unix_nano=int(stamps[i]), observed_time_unix_nano=int(stamps[i]),
                           severity_number=LEVEL_NUMBER.get(levels.iat[i], 9), severity_text=levels.iat[i],
                           body=AnyValue(string_value=messages.iat[i]),
                           trace_id=bytes.fromhex(trace_id) if isinstance(trace_id, str) and trace_id else b"",
                           span_id=bytes.fromhex(span_id) if isinstance(span_id, str) and span_id else b"")
        instance = instances.iat[i]
        groups.setdefault((str(services.iat[i]), instance if pd.notna(instance) else None), []).append(record)
    for (service, instance), records in groups.items():
        request.resource_logs.append(ResourceLogs(resource=_resource(service, instance),
                                                  scope_logs=[ScopeLogs(log_records=records)]))
    return Request("/v1/logs", request.SerializeToString(), len(frame), frame["timestamp"].iloc[-1])


def _points(frame: pd.DataFrame) -> Request:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue
    from opentelemetry.proto.metrics.v1.metrics_pb2 import (
        Gauge,
        Metric,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
    )

    stamps = _nanos(frame["timestamp"])
    values = frame["value"].to_numpy(float)
    peers = frame["peer"] if "peer" in frame.columns else pd.Series(None, index=frame.index)
    instances = frame["instance"] if "instance" in frame.columns else pd.Series(None, index=frame.index)
    request = ExportMetricsServiceRequest()
    groups: dict[tuple[str, object], dict[str, list[NumberDataPoint]]] = {}
    names, services = frame["metric"].astype(str), frame["service"]
    for i in range(len(frame)):
        if values[i] != values[i]:
            continue  # OTLP has no missing gauge value; a gap is no point
        peer = peers.iat[i]
        point = NumberDataPoint(time_unix_nano=int(stamps[i]), as_double=float(values[i]),
                                attributes=[KeyValue(key="peer", value=_any(peer))] if pd.notna(peer) else [])
        instance = instances.iat[i]
        key = (str(services.iat[i]), instance if pd.notna(instance) else None)
        groups.setdefault(key, {}).setdefault(names.iat[i], []).append(point)
    for (service, instance), metrics in groups.items():
        request.resource_metrics.append(ResourceMetrics(resource=_resource(service, instance), scope_metrics=[
            ScopeMetrics(metrics=[Metric(name=name, gauge=Gauge(data_points=points)) for name, points in metrics.items()])]))
    return Request("/v1/metrics", request.SerializeToString(), len(frame), frame["timestamp"].iloc[-1])


ENCODERS = {"traces": _spans, "logs": _logs, "metrics": _points}


@dataclass
class ReplayStats:
    """What a replay sent: requests and rows acknowledged, and the answers that asked to wait."""

    requests: int = 0
    rows: int = 0
    throttled: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def send(url: str, request: Request, *, compress: bool = False, timeout: float = 30.0, attempts: int = 20) -> int:
    """POST one request, honouring 429/503 ``Retry-After`` as the SDKs do; the number of waits.

    Raises:
        urllib.error.URLError | urllib.error.HTTPError: the server refused it for good.
    """
    body = gzip_module.compress(request.body, 1) if compress else request.body
    headers = {"Content-Type": PROTOBUF, **({"Content-Encoding": "gzip"} if compress else {})}
    waits = 0
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(urllib.request.Request(url.rstrip("/") + request.path, data=body,
                                                               headers=headers, method="POST"), timeout=timeout):
                return waits
        except urllib.error.HTTPError as exc:
            if exc.code not in (429, 503):
                raise
            waits += 1
            time.sleep(min(float(exc.headers.get("Retry-After") or 1), 5.0))
    raise urllib.error.URLError(f"still throttled after {attempts} attempts")


def replay(url: str, requests: Iterator[Request], *, threads: int = 4, compress: bool = False) -> ReplayStats:
    """Send every request to the OTLP/HTTP endpoint ``url`` (e.g. ``http://127.0.0.1:4318``)."""
    stats = ReplayStats()
    began = time.perf_counter()

    def one(request: Request) -> tuple[Request, int, str | None]:
        try:
            return request, send(url, request, compress=compress), None
        except (urllib.error.URLError, OSError) as exc:
            return request, 0, f"{request.path}: {exc}"

    with ThreadPoolExecutor(threads) as pool:
        for request, waits, error in pool.map(one, requests):
            stats.throttled += waits
            if error:
                stats.failed.append(error)
                continue
            stats.requests += 1
            stats.rows += request.rows
    stats.seconds = time.perf_counter() - began
    return stats
