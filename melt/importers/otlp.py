"""Importer for OpenTelemetry OTLP/JSON, as written by the collector's ``file`` exporter.

Each line is one ``ExportTraceServiceRequest``, ``ExportLogsServiceRequest`` or
``ExportMetricsServiceRequest`` in the OTLP/JSON encoding (opentelemetry-proto, ``docs/specification.md``):

- ``resourceSpans``: service from the ``service.name`` resource attribute; span and resource
  attributes flattened to ``attr.*``; ``kind`` and ``status``; nanosecond times; span events become
  log lines of their span (``exception`` events at ERROR).
- ``resourceLogs``: severity (number, else text), body, trace and span ids.
- ``resourceMetrics``: gauge and sum points; monotonic cumulative sums become per-second rates;
  histograms become ``<name>.mean`` and ``<name>.p50/.p95/.p99`` over each interval (bucket counts
  differenced when cumulative, then interpolated as Prometheus ``histogram_quantile`` does);
  summaries give their quantiles and mean. Point attributes become a ``{k=v}`` suffix of the name.

The nested JSON is flattened per object (``json.loads`` is per line by nature); the resulting
columns are converted in bulk per chunk.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from melt.core.progress import log
from melt.importers.sources import json_lines, source_files
from melt.importers.writer import BundleWriter

SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
SPAN_KINDS = {0: None, 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
SEVERITY = ((1, "DEBUG"), (5, "DEBUG"), (9, "INFO"), (13, "WARN"), (17, "ERROR"), (21, "FATAL"))
INSTANCE_KEYS = ("k8s.pod.name", "service.instance.id", "host.name")
HISTOGRAM_QUANTILES = (0.5, 0.95, 0.99)
CUMULATIVE = (2, "AGGREGATION_TEMPORALITY_CUMULATIVE")


def import_otlp(src: str | Path, writer: BundleWriter, *, chunk_rows: int = 100_000, quiet: bool = False) -> None:
    """Import every OTLP/JSON-lines file under ``src`` into ``writer``."""
    series_state: dict[tuple[str, str, str], tuple[Any, ...]] = {}
    files = source_files(src, SUFFIXES)
    for index, file in enumerate(files, start=1):
        rows: dict[str, list[dict[str, Any]]] = {"traces": [], "logs": [], "metrics": []}
        for number, request in json_lines(file, writer.bad_rows):
            if not isinstance(request, dict):
                writer.bad_rows.add(f"{file}:{number}", "not a JSON object")
                continue
            try:
                _flatten(request, number, rows, series_state)
            except (TypeError, ValueError, AttributeError, KeyError) as exc:
                writer.bad_rows.add(f"{file}:{number}", f"not OTLP/JSON ({type(exc).__name__}: {exc})")
            if max(len(r) for r in rows.values()) >= chunk_rows:
                _flush(rows, writer, file)
        _flush(rows, writer, file)
        log(f"{file.name}: {index}/{len(files)} files", quiet, stage="melt import")


def _flush(rows: dict[str, list[dict[str, Any]]], writer: BundleWriter, file: Path) -> None:
    for signal, records in rows.items():
        writer.add_records(signal, records, str(file), time_unit="ns")


def _flatten(request: dict[str, Any], line: int, rows: dict[str, list[dict[str, Any]]],
             series_state: dict[tuple[str, str, str], tuple[Any, ...]]) -> None:
    for resource_spans in request.get("resourceSpans") or []:
        service, instance, resource_attrs = _resource(resource_spans)
        for scope in resource_spans.get("scopeSpans") or []:
            for span in scope.get("spans") or []:
                rows["traces"].append(_span(span, service, resource_attrs, line))
                rows["logs"].extend(_span_events(span, service, instance, line))
    for resource_logs in request.get("resourceLogs") or []:
        service, instance, _ = _resource(resource_logs)
        for scope in resource_logs.get("scopeLogs") or []:
            for record in scope.get("logRecords") or []:
                rows["logs"].append(_log_record(record, service, instance, line))
    for resource_metrics in request.get("resourceMetrics") or []:
        service, instance, _ = _resource(resource_metrics)
        for scope in resource_metrics.get("scopeMetrics") or []:
            for metric in scope.get("metrics") or []:
                for stamp, name, value in _metric_points(metric, service, instance, series_state):
                    rows["metrics"].append({"timestamp": stamp, "service": service, "instance": instance,
                                            "metric": name, "value": value, "_line": line})


# ---------------------------------------------------------------------------------- common parts
def any_value(value: dict[str, Any] | None) -> Any:
    """An OTLP ``AnyValue`` as a Python scalar; arrays and maps become JSON text."""
    if not value:
        return None
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])  # int64 is a JSON string in OTLP/JSON
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return json.dumps([any_value(v) for v in value["arrayValue"].get("values") or []])
    if "kvlistValue" in value:
        return json.dumps(attributes(value["kvlistValue"].get("values")))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def attributes(pairs: Iterable[dict[str, Any]] | None) -> dict[str, Any]:
    """An OTLP ``KeyValue`` list as a dict."""
    return {pair["key"]: any_value(pair.get("value")) for pair in pairs or []}


def hex_id(value: str | None) -> str | None:
    """A trace or span id as lower-case hex; empty means none. Base64 ids (older exporters) are decoded."""
    if not value:
        return None
    try:
        int(value, 16)
        return value.lower()
    except ValueError:
        try:
            return base64.b64decode(value, validate=True).hex()
        except (binascii.Error, ValueError):
            return value


def _resource(block: dict[str, Any]) -> tuple[str | None, str | None, dict[str, Any]]:
    attrs = attributes((block.get("resource") or {}).get("attributes"))
    service = attrs.pop("service.name", None)
    instance = next((str(attrs[k]) for k in INSTANCE_KEYS if attrs.get(k) is not None), None)
    return service, instance, attrs


# ---------------------------------------------------------------------------------- spans
def _span(span: dict[str, Any], service: str | None, resource_attrs: dict[str, Any], line: int) -> dict[str, Any]:
    attrs = {**resource_attrs, **attributes(span.get("attributes"))}
    start, end = int(span["startTimeUnixNano"]), int(span["endTimeUnixNano"])
    status = span.get("status") or {}
    code = status.get("code", 0)
    failed = code in (2, "STATUS_CODE_ERROR")
    http = attrs.get("http.response.status_code", attrs.get("http.status_code"))
    row = {f"attr.{k}": v for k, v in attrs.items()}
    kind = span.get("kind", 0)
    row.update({
        "trace_id": hex_id(span.get("traceId")), "span_id": hex_id(span.get("spanId")),
        "parent_span_id": hex_id(span.get("parentSpanId")), "span_name": span.get("name"),
        "service_name": service, "start_time": start, "duration": (end - start) / 1e6,
        "span_kind": SPAN_KINDS.get(kind) if isinstance(kind, int) else str(kind).removeprefix("SPAN_KIND_").lower(),
        "status_code": int(http) if http is not None else 500 if failed else None,
        "_line": line,
    })
    if code not in (0, "STATUS_CODE_UNSET"):
        row["attr.otel.status_code"] = "ERROR" if failed else "OK"
    if status.get("message"):
        row["attr.otel.status_description"] = status["message"]
    return row


def _span_events(span: dict[str, Any], service: str | None, instance: str | None, line: int) -> list[dict[str, Any]]:
    """Span events (OTel's structured logs inside a span) as log lines of that span."""
    out = []
    for event in span.get("events") or []:
        attrs = attributes(event.get("attributes"))
        name = event.get("name") or "event"
        detail = " ".join(f"{k}={v}" for k, v in attrs.items() if k != "exception.stacktrace")
        out.append({"timestamp": int(event["timeUnixNano"]), "service": service, "instance": instance,
                    "level": "ERROR" if name == "exception" else "INFO",
                    "message": f"{name} {detail}".strip(), "trace_id": hex_id(span.get("traceId")),
                    "span_id": hex_id(span.get("spanId")), "_line": line})
    return out


# ---------------------------------------------------------------------------------- logs
def _severity(record: dict[str, Any]) -> str:
    number = int(record.get("severityNumber") or 0) if str(record.get("severityNumber", "0")).isdigit() else 0
    if number > 0:
        return next(level for low, level in reversed(SEVERITY) if number >= low)
    return str(record.get("severityText") or "INFO")


def _log_record(record: dict[str, Any], service: str | None, instance: str | None, line: int) -> dict[str, Any]:
    stamp = int(record.get("timeUnixNano") or 0) or int(record.get("observedTimeUnixNano") or 0)
    body = any_value(record.get("body"))
    return {"timestamp": stamp or None, "service": service, "instance": instance, "level": _severity(record),
            "message": "" if body is None else str(body), "trace_id": hex_id(record.get("traceId")),
            "span_id": hex_id(record.get("spanId")), "_line": line}


# ---------------------------------------------------------------------------------- metrics
def _metric_points(metric: dict[str, Any], service: str | None, instance: str | None,
                   state: dict[tuple[str, str, str], tuple[Any, ...]]) -> list[tuple[int, str, float | None]]:
    name = metric["name"]
    out: list[tuple[int, str, float | None]] = []
    if "gauge" in metric or "sum" in metric:
        body = metric.get("gauge") or metric.get("sum")
        cumulative = "sum" in metric and metric["sum"].get("isMonotonic") and \
            metric["sum"].get("aggregationTemporality") in CUMULATIVE
        for point in body.get("dataPoints") or []:
            stamp, series = int(point["timeUnixNano"]), _series_name(name, point)
            value = _number(point)
            if not cumulative:
                out.append((stamp, series, value))
                continue
            key = (str(service), str(instance), series)
            previous, state[key] = state.get(key), (stamp, value)
            if previous is not None and value is not None and previous[1] is not None and stamp > previous[0]:
                increase = value - previous[1] if value >= previous[1] else value  # a counter reset restarts at 0
                out.append((stamp, f"{series}.rate", increase / ((stamp - previous[0]) / 1e9)))
    for kind in ("histogram", "exponentialHistogram"):
        if kind not in metric:
            continue
        cumulative = metric[kind].get("aggregationTemporality") in CUMULATIVE
        for point in metric[kind].get("dataPoints") or []:
            stamp, series = int(point["timeUnixNano"]), _series_name(name, point)
            count, total = float(point.get("count") or 0), point.get("sum")
            buckets = np.asarray([float(c) for c in point.get("bucketCounts") or []])
            if cumulative:
                key = (str(service), str(instance), series)
                previous, state[key] = state.get(key), (stamp, count, total, buckets)
                if previous is None or stamp <= previous[0] or count < previous[1]:
                    continue
                count -= previous[1]
                total = None if total is None or previous[2] is None else float(total) - float(previous[2])
                buckets = buckets - previous[3] if len(previous[3]) == len(buckets) else buckets
            if count > 0 and total is not None:
                out.append((stamp, f"{series}.mean", float(total) / count))
            bounds = [float(b) for b in point.get("explicitBounds") or []]
            if kind == "histogram" and count > 0 and len(bounds) + 1 == len(buckets):
                for q in HISTOGRAM_QUANTILES:
                    out.append((stamp, f"{series}.p{round(q * 100)}", bucket_quantile(q, np.asarray(bounds), buckets)))
    if "summary" in metric:
        for point in metric["summary"].get("dataPoints") or []:
            stamp, series = int(point["timeUnixNano"]), _series_name(name, point)
            for quantile in point.get("quantileValues") or []:
                q = float(quantile.get("quantile", 0.0))
                out.append((stamp, f"{series}.p{round(q * 100)}", float(quantile.get("value", 0.0))))
    return out


def bucket_quantile(q: float, bounds: np.ndarray, counts: np.ndarray) -> float:
    """Quantile ``q`` of a histogram by linear interpolation inside its bucket (Prometheus ``histogram_quantile``).

    ``counts`` has one more entry than ``bounds``: the last bucket is ``(bounds[-1], +inf)`` and
    a quantile that falls there is reported as ``bounds[-1]``.
    """
    cumulative = np.cumsum(counts)
    rank = q * cumulative[-1]
    index = int(np.searchsorted(cumulative, rank, side="left"))
    if index >= len(bounds):
        return float(bounds[-1]) if len(bounds) else float("nan")
    lower = 0.0 if index == 0 else float(bounds[index - 1])
    upper = float(bounds[index])
    below = 0.0 if index == 0 else float(cumulative[index - 1])
    inside = float(counts[index])
    return upper if inside == 0 else lower + (upper - lower) * (rank - below) / inside


def _number(point: dict[str, Any]) -> float | None:
    if "asDouble" in point:
        return float(point["asDouble"])
    if "asInt" in point:
        return float(int(point["asInt"]))
    return None


def _series_name(name: str, point: dict[str, Any]) -> str:
    labels = attributes(point.get("attributes"))
    if not labels:
        return name
    return name + "{" + ",".join(f"{k}={labels[k]}" for k in sorted(labels)) + "}"


__all__ = ["import_otlp", "any_value", "attributes", "hex_id", "bucket_quantile"]
