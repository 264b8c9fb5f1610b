"""Decoding OTLP/HTTP request bodies into bundle frames, and encoding the answers.

The OTLP/HTTP specification (opentelemetry-proto ``docs/specification.md``, "OTLP/HTTP") sends one
``Export{Trace,Logs,Metrics}ServiceRequest`` per POST to ``/v1/traces``, ``/v1/logs`` or
``/v1/metrics``, as binary protobuf (``application/x-protobuf``) or as OTLP/JSON
(``application/json``: lower-case hex ids, camelCase names, int64 as strings), optionally with
``Content-Encoding: gzip``. The success response is the matching ``Export*ServiceResponse``
encoded like the request, with ``partial_success`` naming how many items were rejected; a failure
carries a ``google.rpc.Status`` (code and message).

Both encodings reach the same mapping, :func:`melt.importers.otlp.flatten_request` (the OTLP
file importer's). Protobuf gets there through :func:`proto_request`, which builds the OTLP/JSON
shape of only the fields the mapping reads, straight from the parsed message: about eight times
faster than ``google.protobuf.json_format.MessageToDict`` on a 512-span batch (see
``benchmarks/serve_ingest.py``). Rows are then checked exactly as an import checks them
(:func:`melt.importers.writer.checked_rows`).
"""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from collections import ChainMap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from melt.core.bundle import TIME_COLUMNS
from melt.core.timeutil import format_duration
from melt.importers.otlp import ITEM_ERRORS, flatten_request, json_kind, reason_of
from melt.importers.writer import checked_rows, records_frame

MAX_AHEAD = pd.Timedelta("1h")  # how far ahead of the server clock an event time may be

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
CONTENT_TYPES = (PROTOBUF, JSON)


@dataclass(frozen=True)
class Endpoint:
    """One OTLP/HTTP path: its melt signal, the OTLP/JSON key of its resource blocks, its messages."""

    path: str
    signal: str
    key: str
    request: type[Message]
    response: type[Message]
    rejected_field: str


ENDPOINTS: dict[str, Endpoint] = {
    "traces": Endpoint("/v1/traces", "traces", "resourceSpans", trace_service_pb2.ExportTraceServiceRequest,
                       trace_service_pb2.ExportTraceServiceResponse, "rejected_spans"),
    "logs": Endpoint("/v1/logs", "logs", "resourceLogs", logs_service_pb2.ExportLogsServiceRequest,
                     logs_service_pb2.ExportLogsServiceResponse, "rejected_log_records"),
    "metrics": Endpoint("/v1/metrics", "metrics", "resourceMetrics", metrics_service_pb2.ExportMetricsServiceRequest,
                        metrics_service_pb2.ExportMetricsServiceResponse, "rejected_data_points"),
}
"""By melt signal name (the OTLP signal ``traces`` holds spans; ``metrics`` holds data points)."""


class BodyError(Exception):
    """A request body that cannot be taken; ``status`` is the HTTP status to answer (400, 413 or 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())


@dataclass
class Decoded:
    """What one request held: good rows per melt signal, and what was rejected.

    ``rejected`` counts the request's own items (spans, log records, data points) that were bad;
    ``rejected_rows`` counts bad rows per melt signal (a span's bad event is a bad log row).
    """

    rows: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    rejected_rows: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def error_message(self, limit: int = 3) -> str:
        """The first few reasons on one line, for ``partial_success.error_message``."""
        shown = "; ".join(self.errors[:limit])
        more = f" (and {len(self.errors) - limit} more)" if len(self.errors) > limit else ""
        return f"{shown}{more}"


@dataclass
class Batch:
    """Several requests decoded together: one result per body (in order), and their good rows together.

    Checking rows costs pandas a fixed overhead per call; checking the requests that arrived
    together in one call costs about a quarter as much per row as checking them one by one.
    """

    results: list[Decoded | BodyError]
    frames: dict[str, pd.DataFrame]
    staged: dict[tuple[str, str, str], tuple[Any, ...]] = field(default_factory=dict, repr=False)


def media_type(content_type: str | None) -> str:
    """The media type of a ``Content-Type`` header, without parameters, lower case.

    Raises:
        BodyError: 415, neither protobuf nor JSON.
    """
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind not in CONTENT_TYPES:
        raise BodyError(415, f"unsupported Content-Type {kind or 'none'!r}: send {PROTOBUF} or {JSON}")
    return kind


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body after ``Content-Encoding`` (``gzip`` or none), at most ``limit`` bytes once inflated.

    Raises:
        BodyError: 415 for another encoding, 400 for broken gzip, 413 when it inflates beyond ``limit``.
    """
    coding = (encoding or "identity").strip().lower()
    if coding in ("", "identity"):
        return body
    if coding != "gzip":
        raise BodyError(415, f"unsupported Content-Encoding {coding!r}: send gzip or none")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BodyError(400, f"the body is not valid gzip ({exc})") from None
    if len(out) > limit:
        raise BodyError(413, f"the body inflates to more than {limit:,} bytes")
    if not inflater.eof:
        raise BodyError(400, "the body is not valid gzip (it ends early)")
    return out


class OtlpDecoder:
    """Turns request bodies into checked bundle frames; one per server.

    It keeps the last point of every cumulative series (monotonic sums become rates, cumulative
    histograms are differenced) across requests. A batch's updates to that state are staged in
    :attr:`Batch.staged` and applied by :meth:`commit` once its rows are accepted, so a sender
    retrying a refused request (429) gets the same rates as if the first try had been taken.
    Used from one thread at a time.
    """

    def __init__(self) -> None:
        self.series_state: dict[tuple[str, str, str], tuple[Any, ...]] = {}

    def decode(self, signal: str, body: bytes, content_type: str) -> tuple[Decoded, dict[str, pd.DataFrame]]:
        """Decode one (already inflated) body for ``signal``'s endpoint; its result and good rows.

        Raises:
            BodyError: 400, the body is not a request of that endpoint in that encoding.
        """
        batch = self.decode_batch([(signal, body, content_type)])
        result = batch.results[0]
        if isinstance(result, BodyError):
            raise result
        self.commit(batch)
        return result, batch.frames

    def decode_batch(self, bodies: list[tuple[str, bytes, str]]) -> Batch:
        """Decode ``(signal, inflated body, media type)`` requests together; a body that is not a request
        of its endpoint gets a :class:`BodyError` (400) as its result and leaves no row behind."""
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in ("traces", "logs", "metrics")}
        staged: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        results: list[Decoded | BodyError] = []
        for index, (signal, body, content_type) in enumerate(bodies):
            endpoint, mine = ENDPOINTS[signal], {}
            sizes = {name: len(records) for name, records in rows.items()}
            errors: list[str] = []
            try:
                request = proto_request(endpoint, body) if content_type == PROTOBUF else json_request(endpoint, body)
                flatten_request(request, index, rows, ChainMap(mine, staged, self.series_state), errors.append)
            except BodyError as exc:
                results.append(exc)
            except ITEM_ERRORS as exc:
                results.append(BodyError(400, f"not an OTLP {endpoint.key} request ({reason_of(exc)})"))
            else:
                staged.update(mine)
                results.append(Decoded(rejected=len(errors), errors=errors))
                continue
            for name, size in sizes.items():  # the rows a malformed request appended before it failed
                del rows[name][size:]
        frames = {}
        for name, records in rows.items():
            if records:
                good = _check(name, records, results, bodies)
                if len(good):
                    frames[name] = good
        return Batch(results, frames, staged)

    def commit(self, batch: Batch) -> None:
        """Keep the cumulative-series state of an accepted batch."""
        self.series_state.update(batch.staged)


def _check(signal: str, records: list[dict[str, Any]], results: list[Decoded | BodyError],
           bodies: list[tuple[str, bytes, str]]) -> pd.DataFrame:
    """Check ``records`` (``_line``: the index of their request) as an import would; count each
    request's good and bad rows in its result; return the good rows."""
    frame, lines, problems = records_frame(signal, records, time_unit="ns")
    problems = _ahead_of_clock(signal, frame, problems)
    good, problems, _ = checked_rows(signal, frame, problems)
    bad = problems.notna().to_numpy()
    totals = lines.value_counts()
    failed = lines[bad].value_counts()
    for index, total in totals.items():
        result = results[int(index)]
        assert isinstance(result, Decoded)  # rows of a failed request were removed
        rejected = int(failed.get(index, 0))
        result.rows[signal] = int(total) - rejected
        if rejected:
            result.rejected_rows[signal] = rejected
            if bodies[int(index)][0] == signal:
                result.rejected += rejected
    for index, reason in list(zip(lines[bad], problems[bad], strict=True))[:200]:
        errors = results[int(index)].errors  # type: ignore[union-attr]
        if len(errors) < 4:
            errors.append(f"bad {signal} row ({reason})")
    return good


def _ahead_of_clock(signal: str, frame: pd.DataFrame, problems: pd.Series | None) -> pd.Series | None:
    """Rows dated more than :data:`MAX_AHEAD` after this server's clock are bad: one sender with a
    wrong clock would otherwise move the stream's watermark years ahead, and every real row after
    it would be late (and swept as older than the retention)."""
    column = TIME_COLUMNS[signal]
    if column not in frame.columns or not len(frame):
        return problems
    ahead = (frame[column] > pd.Timestamp.now(tz="UTC") + MAX_AHEAD).fillna(False).to_numpy()
    if not ahead.any():
        return problems
    reason = f"column '{column}' is more than {format_duration(MAX_AHEAD)} ahead of the server's clock"
    base = problems if problems is not None else pd.Series(pd.NA, index=frame.index, dtype="string")
    return base.mask(base.isna() & ahead, reason)


def json_request(endpoint: Endpoint, body: bytes) -> dict[str, Any]:
    """An OTLP/JSON body as the mapping's dict (only the endpoint's own resource blocks).

    Raises:
        BodyError: 400, not JSON or not an object.
    """
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BodyError(400, f"the body is not JSON ({reason_of(exc)})") from None
    if not isinstance(request, dict):
        raise BodyError(400, f"the body is {json_kind(request)}, not an OTLP/JSON {endpoint.key} object")
    return {endpoint.key: request.get(endpoint.key)}


def proto_request(endpoint: Endpoint, body: bytes) -> dict[str, Any]:
    """A protobuf body as the OTLP/JSON dict the mapping reads (ids in hex, enums as numbers).

    Raises:
        BodyError: 400, not a protobuf ``Export*ServiceRequest``.
    """
    try:
        message = endpoint.request.FromString(body)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise BodyError(400, f"the body is not a protobuf {endpoint.request.__name__} ({reason_of(exc)})") from None
    return {endpoint.key: PROTO_BLOCKS[endpoint.signal](message)}


# ---------------------------------------------------------------------------------- protobuf -> OTLP/JSON shape
def _value(value: Any) -> dict[str, Any] | None:
    """An ``AnyValue`` message as its OTLP/JSON object."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return {"stringValue": value.string_value}
    if which == "int_value":
        return {"intValue": value.int_value}
    if which == "double_value":
        return {"doubleValue": value.double_value}
    if which == "bool_value":
        return {"boolValue": value.bool_value}
    if which == "array_value":
        return {"arrayValue": {"values": [_value(v) for v in value.array_value.values]}}
    if which == "kvlist_value":
        return {"kvlistValue": {"values": _attributes(value.kvlist_value.values)}}
    if which == "bytes_value":
        return {"bytesValue": base64.b64encode(value.bytes_value).decode("ascii")}
    return None


_PAIRS: dict[bytes, dict[str, Any]] = {}
PAIR_CACHE = 65_536
"""Attribute pairs remembered by their encoding: spans repeat a few (``http.method=GET``) over and
over, and looking one up by its bytes costs a third of reading it again; read-only dicts, shared."""


def _attributes(pairs: Any) -> list[dict[str, Any]]:
    out = []
    for pair in pairs:
        encoded = pair.SerializeToString()
        known = _PAIRS.get(encoded)
        if known is None:
            if len(_PAIRS) >= PAIR_CACHE:
                _PAIRS.clear()
            known = _PAIRS[encoded] = {"key": pair.key, "value": _value(pair.value)}
        out.append(known)
    return out


def _resource(block: Any) -> dict[str, Any]:
    return {"attributes": _attributes(block.resource.attributes)}


def _span(span: Any) -> dict[str, Any]:
    out = {"traceId": span.trace_id.hex(), "spanId": span.span_id.hex(), "parentSpanId": span.parent_span_id.hex(),
           "name": span.name, "kind": span.kind, "startTimeUnixNano": span.start_time_unix_nano,
           "endTimeUnixNano": span.end_time_unix_nano, "attributes": _attributes(span.attributes),
           "status": {"code": span.status.code, "message": span.status.message}}
    if span.events:
        out["events"] = [{"name": event.name, "timeUnixNano": event.time_unix_nano,
                          "attributes": _attributes(event.attributes)} for event in span.events]
    return out


def _log_record(record: Any) -> dict[str, Any]:
    return {"timeUnixNano": record.time_unix_nano, "observedTimeUnixNano": record.observed_time_unix_nano,
            "severityNumber": record.severity_number, "severityText": record.severity_text,
            "body": _value(record.body) if record.HasField("body") else None,
            "traceId": record.trace_id.hex(), "spanId": record.span_id.hex()}


def _number_point(point: Any) -> dict[str, Any]:
    out = {"timeUnixNano": point.time_unix_nano, "attributes": _attributes(point.attributes)}
    which = point.WhichOneof("value")
    if which == "as_double":
        out["asDouble"] = point.as_double
    elif which == "as_int":
        out["asInt"] = point.as_int
    return out


def _histogram_point(point: Any, explicit: bool) -> dict[str, Any]:
    out = {"timeUnixNano": point.time_unix_nano, "attributes": _attributes(point.attributes), "count": point.count}
    if point.HasField("sum"):
        out["sum"] = point.sum
    if explicit:
        out["bucketCounts"] = list(point.bucket_counts)
        out["explicitBounds"] = list(point.explicit_bounds)
    return out


def _metric(metric: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": metric.name}
    which = metric.WhichOneof("data")
    if which == "gauge":
        out["gauge"] = {"dataPoints": [_number_point(p) for p in metric.gauge.data_points]}
    elif which == "sum":
        body = metric.sum
        out["sum"] = {"dataPoints": [_number_point(p) for p in body.data_points], "isMonotonic": body.is_monotonic,
                      "aggregationTemporality": body.aggregation_temporality}
    elif which in ("histogram", "exponential_histogram"):
        body = getattr(metric, which)
        explicit = which == "histogram"
        out["histogram" if explicit else "exponentialHistogram"] = {
            "dataPoints": [_histogram_point(p, explicit) for p in body.data_points],
            "aggregationTemporality": body.aggregation_temporality}
    elif which == "summary":
        out["summary"] = {"dataPoints": [
            {"timeUnixNano": p.time_unix_nano, "attributes": _attributes(p.attributes),
             "quantileValues": [{"quantile": q.quantile, "value": q.value} for q in p.quantile_values]}
            for p in metric.summary.data_points]}
    return out


def _spans(message: Any) -> list[dict[str, Any]]:
    return [{"resource": _resource(block), "scopeSpans": [{"spans": [_span(s) for s in scope.spans]}
                                                          for scope in block.scope_spans]}
            for block in message.resource_spans]


def _logs(message: Any) -> list[dict[str, Any]]:
    return [{"resource": _resource(block), "scopeLogs": [{"logRecords": [_log_record(r) for r in scope.log_records]}
                                                         for scope in block.scope_logs]}
            for block in message.resource_logs]


def _metrics(message: Any) -> list[dict[str, Any]]:
    return [{"resource": _resource(block), "scopeMetrics": [{"metrics": [_metric(m) for m in scope.metrics]}
                                                            for scope in block.scope_metrics]}
            for block in message.resource_metrics]


PROTO_BLOCKS: dict[str, Callable[[Any], list[dict[str, Any]]]] = {"traces": _spans, "logs": _logs,
                                                                   "metrics": _metrics}


# ---------------------------------------------------------------------------------- answers
def export_response(signal: str, decoded: Decoded, content_type: str) -> bytes:
    """The ``Export*ServiceResponse`` for ``decoded``, encoded like the request; ``partial_success``
    is set only when something was rejected (an empty message means full success; a rejected
    span event alone gives a message with 0 rejected spans, as the specification allows for warnings)."""
    endpoint = ENDPOINTS[signal]
    response = endpoint.response()
    if decoded.rejected or decoded.errors:
        setattr(response.partial_success, endpoint.rejected_field, decoded.rejected)
        response.partial_success.error_message = decoded.error_message()
    if content_type == PROTOBUF:
        return response.SerializeToString()
    return json.dumps(MessageToDict(response), separators=(",", ":")).encode()


GRPC_CODES = {400: 3, 413: 3, 415: 3, 429: 8, 500: 13, 503: 14}
"""``google.rpc.Code`` per HTTP status: INVALID_ARGUMENT, RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE."""


def status_body(status: int, message: str, content_type: str) -> tuple[bytes, str]:
    """A failure's body, a ``google.rpc.Status`` (code 1, message 2) in the request's encoding, and its type.

    The two fields are written by hand: ``google.rpc`` is not part of opentelemetry-proto.
    """
    code = GRPC_CODES.get(status, 2)
    if content_type != PROTOBUF:
        return json.dumps({"code": code, "message": message}).encode(), JSON
    text = message.encode()
    return bytes([0x08, code, 0x12]) + _varint(len(text)) + text, PROTOBUF


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | (0x80 if number else 0))
        if not number:
            return bytes(out)


def gzip_body(body: bytes) -> bytes:
    """``body`` gzip-compressed (what senders do with ``Content-Encoding: gzip``; for tests and benchmarks)."""
    return gzip.compress(body, compresslevel=1)


__all__ = ["BodyError", "Batch", "Decoded", "ENDPOINTS", "Endpoint", "OtlpDecoder", "PROTOBUF", "JSON", "CONTENT_TYPES",
           "media_type", "inflate", "json_request", "proto_request", "export_response", "status_body", "gzip_body"]
