"""Importer for OpenTelemetry OTLP/JSON, as written by the collector's ``file`` exporter.

Each line is one ``ExportTraceServiceRequest``, ``ExportLogsServiceRequest`` or
``ExportMetricsServiceRequest`` in the OTLP/JSON encoding (opentelemetry-proto, ``docs/specification.md``);
a file may also hold one such request as a whole (pretty-printed) document, as the
OpenTelemetry examples do (:func:`~melt.importers.sources.json_documents` tells which):

- ``resourceSpans``: service from the ``service.name`` resource attribute; span and resource
  attributes flattened to ``attr.*``; ``kind`` and ``status``; nanosecond times; span events become
  log lines of their span (``exception`` events at ERROR).
- ``resourceLogs``: severity (number, else text), body, trace and span ids.
- ``resourceMetrics``: gauge and sum points; monotonic cumulative sums become per-second rates;
  histograms become ``<name>.mean`` and ``<name>.p50/.p95/.p99`` over each interval (bucket counts
  differenced when cumulative, then interpolated as Prometheus ``histogram_quantile`` does);
  summaries give their quantiles and mean. Point attributes become a ``{k=v}`` suffix of the name.

The nested JSON is flattened per object (``json.loads`` is per line by nature); the resulting
columns are converted in bulk per chunk. A span, log record or metric with a bad field (a time
that is not a number or beyond int64 nanoseconds, a status that is not one) is one bad row on
its own; the rest of its request is kept.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np

from melt.core.progress import log, progress
from melt.importers.sources import json_documents, source_files
from melt.importers.writer import BundleWriter

SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
SPAN_KINDS = {0: None, 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
SEVERITY = ((1, "DEBUG"), (5, "DEBUG"), (9, "INFO"), (13, "WARN"), (17, "ERROR"), (21, "FATAL"))
INSTANCE_KEYS = ("k8s.pod.name", "service.instance.id", "host.name")
HISTOGRAM_QUANTILES = (0.5, 0.95, 0.99)
CUMULATIVE = (2, "AGGREGATION_TEMPORALITY_CUMULATIVE")
ITEM_ERRORS = (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError, RecursionError)
"""What reading one malformed item (a span, a record, a point) can raise: it makes that item a bad row."""
SIGNAL_KEYS = ("resourceSpans", "resourceLogs", "resourceMetrics")


def import_otlp(src: str | Path, writer: BundleWriter, *, chunk_rows: int = 100_000, quiet: bool = False) -> None:
    """Import every OTLP/JSON file (JSON lines or whole documents) under ``src`` into ``writer``."""
    series_state: dict[tuple[str, str, str], tuple[Any, ...]] = {}
    files = source_files(src, SUFFIXES)
    for index, file in enumerate(progress(files, "import", quiet, total=len(files)), start=1):
        rows: dict[str, list[dict[str, Any]]] = {"traces": [], "logs": [], "metrics": []}
        for number, request in json_documents(file, writer.bad_rows):
            where = f"{file}:{number}"
            if not isinstance(request, dict):
                writer.bad_rows.add(where, f"not a JSON object (an OTLP request), but {json_kind(request)}")
                continue
            if not any(key in request for key in SIGNAL_KEYS):
                keys = ", ".join(map(str, list(request)[:5])) or "none"
                jaeger = "; a Jaeger export? use 'melt import jaeger'" if "data" in request or "spans" in request else ""
                writer.bad_rows.add(where, f"not an OTLP request: no {', '.join(SIGNAL_KEYS)} (keys: {keys[:120]}){jaeger}")
                continue
            try:
                flatten_request(request, number, rows, series_state, lambda reason, at=where: writer.bad_rows.add(at, reason))
            except ITEM_ERRORS as exc:
                writer.bad_rows.add(where, f"not OTLP/JSON ({reason_of(exc)})")
            if max(len(r) for r in rows.values()) >= chunk_rows:
                _flush(rows, writer, file)
        _flush(rows, writer, file)
        log(f"{file.name}: {index}/{len(files)} files", quiet, stage="melt import")


def _flush(rows: dict[str, list[dict[str, Any]]], writer: BundleWriter, file: Path) -> None:
    for signal, records in rows.items():
        writer.add_records(signal, records, str(file), time_unit="ns")


def flatten_request(request: dict[str, Any], line: int, rows: dict[str, list[dict[str, Any]]],
                    series_state: MutableMapping[tuple[str, str, str], tuple[Any, ...]],
                    bad: Callable[[str], None]) -> None:
    """Append the rows of one OTLP/JSON request (a dict as ``json.loads`` gives it) to ``rows``
    (signal -> row dicts, each with ``_line``); a malformed resource block, span, record or metric
    goes to ``bad`` alone.

    ``series_state`` holds the last point of each cumulative series (sums and histograms are
    differenced against it), so one mapping serves a file import and a live receiver alike.

    Raises:
        TypeError, ValueError, ...: (:data:`ITEM_ERRORS`) the request itself is malformed.
    """
    for service, instance, resource_attrs, span in _resource_items(request, "Spans", "spans", bad):
        try:
            row, events = _span(span, service, resource_attrs, line), _span_events(span, service, instance, line)
        except ITEM_ERRORS as exc:
            bad(f"bad span{item_name(span, 'spanId')} ({reason_of(exc)})")
            continue
        rows["traces"].append(row)
        rows["logs"].extend(events)
    for service, instance, _, record in _resource_items(request, "Logs", "logRecords", bad):
        try:
            rows["logs"].append(_log_record(record, service, instance, line))
        except ITEM_ERRORS as exc:
            bad(f"bad log record ({reason_of(exc)})")
    for service, instance, _, metric in _resource_items(request, "Metrics", "metrics", bad):
        try:
            points = _metric_points(metric, service, instance, series_state)
        except ITEM_ERRORS as exc:
            bad(f"bad metric{item_name(metric, 'name')} ({reason_of(exc)})")
            continue
        rows["metrics"].extend({"timestamp": stamp, "service": service, "instance": instance,
                                "metric": name, "value": value, "_line": line} for stamp, name, value in points)


def _resource_items(request: dict[str, Any], signal: str, item_key: str,
                    bad: Callable[[str], None]) -> Iterator[tuple[str | None, str | None, dict[str, Any], Any]]:
    """(service, instance, resource attributes, item) for each item of ``resource<signal>`` /
    ``scope<signal>`` / ``item_key``; a malformed resource block goes to ``bad`` whole, before any
    of its items, and the next block goes on."""
    for block in _items(request, f"resource{signal}"):
        try:
            service, instance, attrs = _resource(block)
            scopes = [_items(scope, item_key) for scope in _items(block, f"scope{signal}")]
        except ITEM_ERRORS as exc:
            bad(f"bad resource{signal} ({reason_of(exc)})")
            continue
        for items in scopes:
            for item in items:
                yield service, instance, attrs, item


def _items(block: Any, key: str) -> list[Any]:
    """``block[key]``, a JSON list (absent or null: empty)."""
    if not isinstance(block, dict):
        raise TypeError(f"expected an object holding '{key}', got {json_kind(block)}")
    items = block.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise TypeError(f"'{key}' is {json_kind(items)}, not a list")
    return items


def json_kind(value: Any) -> str:
    """What a JSON value is, for a bad-row reason."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def shown(value: Any, width: int = 40) -> str:
    """A JSON value as it was written (cut to ``width`` characters), for a bad-row reason."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def item_name(item: Any, key: str) -> str:
    """`` 'id'`` for a bad-row reason, when ``item`` has a short ``key``."""
    value = item.get(key) if isinstance(item, dict) else None
    return f" {value!r}" if isinstance(value, str | int) and len(str(value)) <= 64 else ""


def reason_of(exc: BaseException) -> str:
    """An exception as a short, one-line reason."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {text}" if isinstance(exc, KeyError | AttributeError) or not text else text


def nanos(value: Any, field: str) -> int:
    """An OTLP time (a JSON string or number of ns since the epoch) as an int that fits int64.

    Raises:
        ValueError: not an integer, or beyond int64 nanoseconds (after 2262): the item is a bad row.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{field} {shown(value)} is not a number of nanoseconds")
    try:
        number = int(value)
    except (ValueError, OverflowError):
        raise ValueError(f"{field} {shown(value)} is not a number of nanoseconds") from None
    if not -(2**63) < number < 2**63:
        raise ValueError(f"{field} {str(value)[:40]} is out of range (beyond int64 nanoseconds, after 2262)")
    return number


def status_code(value: Any) -> int | None:
    """An HTTP status attribute or tag as an int (``None`` when absent).

    Raises:
        ValueError: not a whole number from 0 to 999.
    """
    if value is None:
        return None
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else -1
    except (TypeError, ValueError, OverflowError):
        number = -1
    if isinstance(value, bool) or not 0 <= number < 1000:
        raise ValueError(f"HTTP status {shown(value)} is not a status code")
    return number


# ---------------------------------------------------------------------------------- common parts
def any_value(value: dict[str, Any] | None) -> Any:
    """An OTLP ``AnyValue`` as a Python scalar; arrays and maps become JSON text.

    Raises:
        TypeError, ValueError: ``value`` is not an ``AnyValue`` (the item holding it is a bad row).
    """
    if not value:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"attribute value {shown(value)} is not an AnyValue object")
    if "stringValue" in value:
        return _scalar(value["stringValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])  # int64 is a JSON string in OTLP/JSON
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return json.dumps([any_value(v) for v in _items(value["arrayValue"], "values")])
    if "kvlistValue" in value:
        return json.dumps(attributes(_items(value["kvlistValue"], "values")))
    if "bytesValue" in value:
        return _scalar(value["bytesValue"])
    return None


def _scalar(value: Any) -> Any:
    """A value for an ``attr.*`` cell: JSON objects and lists become JSON text."""
    return json.dumps(value) if isinstance(value, dict | list) else value


def attributes(pairs: Iterable[dict[str, Any]] | None) -> dict[str, Any]:
    """An OTLP ``KeyValue`` list as a dict.

    Raises:
        TypeError, ValueError: not a list of ``{"key": ..., "value": ...}`` objects.
    """
    if pairs is not None and not isinstance(pairs, list):
        raise TypeError(f"attributes are {json_kind(pairs)}, not a list")
    out = {}
    for pair in pairs or []:
        if not isinstance(pair, dict) or not isinstance(pair.get("key"), str):
            raise TypeError(f"attribute {shown(pair, 60)} is not a {{\"key\": text, \"value\": ...}} object")
        out[pair["key"]] = any_value(pair.get("value"))
    return out


def hex_id(value: str | None) -> str | None:
    """A trace or span id as lower-case hex; empty means none. Base64 ids (older exporters) are decoded.

    Raises:
        TypeError: the id is not text (the item holding it is a bad row).
    """
    if not value:
        return None
    if not isinstance(value, str):
        raise TypeError(f"id {shown(value)} is not text")
    try:
        int(value, 16)
        return value.lower()
    except ValueError:
        try:
            return base64.b64decode(value, validate=True).hex()
        except (binascii.Error, ValueError):
            return value


def _resource(block: dict[str, Any]) -> tuple[str | None, str | None, dict[str, Any]]:
    if not isinstance(block, dict):
        raise TypeError(f"expected a resource block object, got {json_kind(block)}")
    resource = block.get("resource") or {}
    if not isinstance(resource, dict):
        raise TypeError(f"'resource' is {json_kind(resource)}, not an object")
    attrs = attributes(resource.get("attributes"))
    service = attrs.pop("service.name", None)
    instance = next((str(attrs[k]) for k in INSTANCE_KEYS if attrs.get(k) is not None), None)
    return None if service is None else str(service), instance, attrs


# ---------------------------------------------------------------------------------- spans
def _span(span: dict[str, Any], service: str | None, resource_attrs: dict[str, Any], line: int) -> dict[str, Any]:
    attrs = {**resource_attrs, **attributes(span.get("attributes"))}
    start = nanos(span["startTimeUnixNano"], "startTimeUnixNano")
    end = nanos(span["endTimeUnixNano"], "endTimeUnixNano")
    status = span.get("status") or {}
    if not isinstance(status, dict):
        raise TypeError(f"'status' is {json_kind(status)}, not an object")
    code = status.get("code", 0)
    failed = code in (2, "STATUS_CODE_ERROR")
    http = status_code(attrs.get("http.response.status_code", attrs.get("http.status_code")))
    row = {f"attr.{k}": v for k, v in attrs.items()}
    kind = span.get("kind", 0)
    row.update({
        "trace_id": hex_id(span.get("traceId")), "span_id": hex_id(span.get("spanId")),
        "parent_span_id": hex_id(span.get("parentSpanId")), "span_name": span.get("name"),
        "service_name": service, "start_time": start, "duration": (end - start) / 1e6,
        "span_kind": SPAN_KINDS.get(kind) if isinstance(kind, int) else str(kind).removeprefix("SPAN_KIND_").lower(),
        "status_code": http if http is not None else 500 if failed else None,
        "_line": line,
    })
    if code not in (0, "STATUS_CODE_UNSET"):
        row["attr.otel.status_code"] = "ERROR" if failed else "OK"
    if status.get("message"):
        row["attr.otel.status_description"] = _scalar(status["message"])
    return row


def _span_events(span: dict[str, Any], service: str | None, instance: str | None, line: int) -> list[dict[str, Any]]:
    """Span events (OTel's structured logs inside a span) as log lines of that span."""
    out = []
    for event in _items(span, "events"):
        if not isinstance(event, dict):
            raise TypeError(f"a span event is {json_kind(event)}, not an object")
        attrs = attributes(event.get("attributes"))
        name = event.get("name") or "event"
        detail = " ".join(f"{k}={v}" for k, v in attrs.items() if k != "exception.stacktrace")
        out.append({"timestamp": nanos(event["timeUnixNano"], "event timeUnixNano"), "service": service,
                    "instance": instance,
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
    if not isinstance(record, dict):
        raise TypeError(f"a log record is {json_kind(record)}, not an object")
    stamp = nanos(record.get("timeUnixNano") or 0, "timeUnixNano") or \
        nanos(record.get("observedTimeUnixNano") or 0, "observedTimeUnixNano")
    body = any_value(record.get("body"))
    return {"timestamp": stamp or None, "service": service, "instance": instance, "level": _severity(record),
            "message": "" if body is None else str(body), "trace_id": hex_id(record.get("traceId")),
            "span_id": hex_id(record.get("spanId")), "_line": line}


# ---------------------------------------------------------------------------------- metrics
def _metric_points(metric: dict[str, Any], service: str | None, instance: str | None,
                   state: MutableMapping[tuple[str, str, str], tuple[Any, ...]]) -> list[tuple[int, str, float | None]]:
    name = metric["name"]
    if not isinstance(name, str):
        raise TypeError(f"metric name {shown(name)} is not text")
    out: list[tuple[int, str, float | None]] = []
    if "gauge" in metric or "sum" in metric:
        body = metric.get("gauge") or metric.get("sum")
        cumulative = "sum" in metric and metric["sum"].get("isMonotonic") and \
            metric["sum"].get("aggregationTemporality") in CUMULATIVE
        for point in body.get("dataPoints") or []:
            stamp, series = nanos(point["timeUnixNano"], "timeUnixNano"), _series_name(name, point)
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
            stamp, series = nanos(point["timeUnixNano"], "timeUnixNano"), _series_name(name, point)
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
            stamp, series = nanos(point["timeUnixNano"], "timeUnixNano"), _series_name(name, point)
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


__all__ = ["import_otlp", "flatten_request", "SIGNAL_KEYS", "any_value", "attributes", "hex_id", "bucket_quantile", "nanos", "status_code", "shown",
           "json_kind", "item_name", "reason_of", "ITEM_ERRORS"]
