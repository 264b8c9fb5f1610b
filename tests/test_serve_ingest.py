"""The OTLP/HTTP receiver: protobuf, JSON and gzip for the three signals, partial success, refusals."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from melt.importers.otlp import flatten_request
from melt.serve.ingest import ingest_router
from melt.serve.otlp_http import ENDPOINTS, PROTOBUF, OtlpDecoder, proto_request
from melt.serve.segments import SegmentStore

T0 = int(pd.Timestamp("2024-05-01 12:00", tz="UTC").value)
SECOND = 1_000_000_000
EVER = (pd.Timestamp("2000-01-01", tz="UTC"), pd.Timestamp("2100-01-01", tz="UTC"))
RESPONSES = {"traces": ExportTraceServiceResponse, "logs": ExportLogsServiceResponse,
             "metrics": ExportMetricsServiceResponse}


def pair(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    if isinstance(value, bytes):
        return KeyValue(key=key, value=AnyValue(bytes_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def resource(block: Any, service: str) -> None:
    block.resource.attributes.extend([pair("service.name", service), pair("host.name", "node-1")])


def span_request(starts: list[int], service: str = "checkout") -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    block = request.resource_spans.add()
    resource(block, service)
    scope = block.scope_spans.add()
    for i, start in enumerate(starts):
        span = scope.spans.add(name=f"GET /orders/{i}", kind=2, trace_id=bytes([i + 1]) * 16,
                               span_id=bytes([i + 1]) * 8, start_time_unix_nano=start,
                               end_time_unix_nano=start + 5_000_000)
        span.attributes.extend([pair("http.method", "GET"), pair("http.status_code", 200 if i else 503)])
        if i == 0:
            span.status.code = 2
            event = span.events.add(name="exception", time_unix_nano=start + 1000)
            event.attributes.extend([pair("exception.type", "TimeoutError")])
    return request


def log_request(times: list[int]) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    block = request.resource_logs.add()
    resource(block, "checkout")
    scope = block.scope_logs.add()
    for i, stamp in enumerate(times):
        record = scope.log_records.add(time_unix_nano=stamp)
        record.severity_number = 17 if i == 0 else 9
        record.body.string_value = f"order {i} failed" if i == 0 else f"order {i} placed"
        record.trace_id = bytes([i + 1]) * 16
    return request


def metric_request(stamp: int, total: float) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    block = request.resource_metrics.add()
    resource(block, "checkout")
    scope = block.scope_metrics.add()
    gauge = scope.metrics.add(name="process.cpu.utilization")
    gauge.gauge.data_points.add(time_unix_nano=stamp, as_double=0.25)
    counter = scope.metrics.add(name="http.server.requests")
    counter.sum.is_monotonic, counter.sum.aggregation_temporality = True, 2
    point = counter.sum.data_points.add(time_unix_nano=stamp, as_int=int(total))
    point.attributes.extend([pair("http.route", "/orders")])
    return request


def otlp_json(message: Any) -> dict[str, Any]:
    """A message in OTLP/JSON: camelCase, int64 as strings, enums as numbers, ids in hex (not base64)."""
    def hexed(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") else hexed(v)
                    for k, v in value.items()}
        return [hexed(v) for v in value] if isinstance(value, list) else value
    return hexed(MessageToDict(message, use_integers_for_enums=True))


class Recorder:
    """The ServeMetrics calls the receiver makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def received(self, signal: str, rows: int) -> None:
        self.calls.append(("received", signal, rows))

    def rejected(self, signal: str, rows: int) -> None:
        self.calls.append(("rejected", signal, rows))

    def request(self, path: str, code: int) -> None:
        self.calls.append(("request", path, code))

    def duplicate(self, path: str) -> None:
        self.calls.append(("duplicate", path, 1))


@pytest.fixture
def served(tmp_path: Path):
    store = SegmentStore(tmp_path, retention=pd.Timedelta(days=1), commit_interval=pd.Timedelta("5ms"),
                         max_pending_bytes=2**26)
    store.start()
    metrics = Recorder()
    app = FastAPI()
    app.include_router(ingest_router(store, metrics, max_body_bytes=200_000))
    with TestClient(app) as client:
        yield client, store, metrics
    store.close()


def post(client: TestClient, signal: str, message: Any, encoding: str, zipped: bool = False):
    if encoding == "json":
        body, kind = json.dumps(message if isinstance(message, dict) else otlp_json(message)).encode(), "application/json"
    else:
        body, kind = message.SerializeToString(), PROTOBUF
    headers = {"Content-Type": kind}
    if zipped:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    return client.post(ENDPOINTS[signal].path, content=body, headers=headers)


def answer(response: Any, signal: str) -> Any:
    """The Export*ServiceResponse of a 200, decoded from the encoding it came in."""
    message = RESPONSES[signal]()
    if response.headers["content-type"] == PROTOBUF:
        message.ParseFromString(response.content)
    else:
        from google.protobuf.json_format import ParseDict
        ParseDict(response.json(), message)
    return message


@pytest.mark.parametrize(("encoding", "zipped"), [("protobuf", False), ("json", False), ("protobuf", True),
                                                  ("json", True)])
def test_three_signals_round_trip(served, encoding: str, zipped: bool) -> None:
    client, store, metrics = served
    sent = {"traces": span_request([T0, T0 + SECOND]), "logs": log_request([T0, T0 + 2 * SECOND])}
    for signal, message in sent.items():
        response = post(client, signal, message, encoding, zipped)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/x-protobuf" if encoding == "protobuf"
                                                            else "application/json")
        assert not answer(response, signal).HasField("partial_success")
    for minute, total in ((0, 100), (1, 160)):  # a cumulative counter across two requests becomes a rate
        assert post(client, "metrics", metric_request(T0 + minute * 60 * SECOND, total), encoding, zipped)\
            .status_code == 200
    bundle = store.bundle(*EVER)
    traces, logs, points = bundle.traces, bundle.logs, bundle.metrics
    assert sorted(traces["span_name"]) == ["GET /orders/0", "GET /orders/1"]
    assert set(traces["service_name"]) == {"checkout"}
    assert traces.set_index("span_name").loc["GET /orders/0", "status_code"] == 503
    assert traces["trace_id"].iloc[0] == "01" * 16 and traces["span_id"].iloc[0] == "01" * 8
    assert traces["start_time"].min() == pd.Timestamp(T0, tz="UTC")
    messages = sorted(logs["message"])  # two records and the span's exception event
    assert messages[:2] == ["exception exception.type=TimeoutError", "order 0 failed"]
    assert logs.set_index("message").loc["order 0 failed", "level"] == "ERROR"
    rate = points[points["metric"] == "http.server.requests{http.route=/orders}.rate"]
    assert rate["value"].tolist() == [1.0]  # 60 more in 60 s
    assert len(points[points["metric"] == "process.cpu.utilization"]) == 2
    assert ("received", "traces", 2) in metrics.calls and ("received", "logs", 1) in metrics.calls
    assert metrics.calls.count(("request", "/v1/metrics", 200)) == 2


def test_bad_items_give_partial_success(served) -> None:
    client, store, metrics = served
    message = otlp_json(span_request([T0, 1_000, T0 + SECOND]))  # the second starts in 1970: not plausible
    spans = message["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans.append(dict(spans[2], spanId="0a" * 8, startTimeUnixNano="soon"))  # not a number: a bad span
    response = post(client, "traces", message, "json")
    assert response.status_code == 200
    partial = answer(response, "traces").partial_success
    assert partial.rejected_spans == 2
    assert "not a number of nanoseconds" in partial.error_message and "plausible" in partial.error_message
    assert "\n" not in partial.error_message
    assert sorted(store.bundle(*EVER).traces["span_name"]) == ["GET /orders/0", "GET /orders/2"]
    assert ("rejected", "traces", 1) in metrics.calls  # the row check; the mapping's own rejects are in the count
    logs = log_request([T0, 5])
    response = post(client, "logs", logs, "protobuf")
    assert answer(response, "logs").partial_success.rejected_log_records == 1
    bad_metric = metric_request(T0, 1)
    bad_metric.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0].time_unix_nano = 7
    assert answer(post(client, "metrics", bad_metric, "protobuf"), "metrics").partial_success.rejected_data_points == 1


def status_of(response: Any) -> tuple[int, str]:
    """A failure's google.rpc.Status: (code, message), from JSON or from its two protobuf fields."""
    if response.headers["content-type"].startswith("application/json"):
        return response.json()["code"], response.json()["message"]
    body = response.content
    assert body[0] == 0x08 and body[2] == 0x12
    return body[1], body[4:].decode() if body[3] < 0x80 else body[5:].decode()


def test_refusals_400_413_415(served) -> None:
    client, store, metrics = served
    path = "/v1/traces"
    cases = [
        (b"\xff\xff\xff", {"Content-Type": PROTOBUF}, 400, "not a protobuf ExportTraceServiceRequest"),
        (b"{nope", {"Content-Type": "application/json"}, 400, "not JSON"),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400, "a list, not an OTLP/JSON"),
        (b'{"resourceSpans": 5}', {"Content-Type": "application/json"}, 400, "not an OTLP resourceSpans request"),
        (b"not gzip", {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}, 400, "not valid gzip"),
        (gzip.compress(b"x" * 10)[:-6], {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}, 400, "ends early"),
        (b"x" * 200_001, {"Content-Type": PROTOBUF}, 413, "over the limit"),
        (gzip.compress(b"\x00" * 300_000), {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}, 413, "inflates"),
        (b"{}", {"Content-Type": "text/plain"}, 415, "unsupported Content-Type"),
        (b"{}", {}, 415, "unsupported Content-Type 'none'"),
        (b"{}", {"Content-Type": "application/json", "Content-Encoding": "br"}, 415, "Content-Encoding 'br'"),
    ]
    for body, headers, status, text in cases:
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == status, (text, response.text)
        code, message = status_of(response)
        assert code == 3 and text in message and "\n" not in message, (text, message)
        expected = PROTOBUF if headers.get("Content-Type") == PROTOBUF else "application/json"
        assert response.headers["content-type"].startswith(expected)
    assert store.max_time() is None
    assert [c for c in metrics.calls if c[0] == "request"] == [("request", path, s) for _, _, s, _ in cases]


def test_full_store_answers_429_with_retry_after(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, retention=pd.Timedelta(days=1), commit_interval=pd.Timedelta("5ms"),
                         max_pending_bytes=1)  # not started: what is submitted stays pending
    waiting = store.submit(OtlpDecoder().decode("logs", log_request([T0]).SerializeToString(), PROTOBUF)[1])
    metrics = Recorder()
    app = FastAPI()
    app.include_router(ingest_router(store, metrics))
    with TestClient(app) as client:
        for encoding in ("protobuf", "json"):
            response = post(client, "logs", log_request([T0 + SECOND]), encoding)
            assert response.status_code == 429
            assert int(response.headers["retry-after"]) >= 1
            code, message = status_of(response)
            assert code == 8 and "busy, retry later" in message
    store.close()
    assert waiting.result(timeout=5) is None
    assert len(store.read("logs", *EVER)) == 1  # only the row taken before the store was full
    assert metrics.calls == [("request", "/v1/logs", 429)] * 2


def test_protobuf_shortcut_matches_message_to_dict() -> None:
    """The protobuf path builds the OTLP/JSON dict itself; it must read every field as the generic
    conversion does (every AnyValue kind, events, every metric type)."""
    traces = span_request([T0, T0 + SECOND])
    span = traces.resource_spans[0].scope_spans[0].spans[1]
    span.parent_span_id = b"\x01" * 8
    span.status.code, span.status.message = 1, "fine"
    span.attributes.extend([pair("ratio", 0.5), pair("cached", True), pair("raw", b"\x00\xff"),
                            KeyValue(key="empty", value=AnyValue())])
    array = span.attributes.add(key="tags")
    array.value.array_value.values.extend([AnyValue(string_value="a"), AnyValue(int_value=3)])
    nested = span.attributes.add(key="nested")
    nested.value.kvlist_value.values.extend([pair("k", "v")])
    metrics = metric_request(T0, 5)
    scope = metrics.resource_metrics[0].scope_metrics[0]
    histogram = scope.metrics.add(name="latency")
    histogram.histogram.aggregation_temporality = 1
    histogram.histogram.data_points.add(time_unix_nano=T0, count=4, sum=10.0, bucket_counts=[1, 2, 1],
                                        explicit_bounds=[1.0, 5.0])
    exponential = scope.metrics.add(name="size")
    exponential.exponential_histogram.data_points.add(time_unix_nano=T0, count=2, sum=8.0)
    summary = scope.metrics.add(name="gc")
    point = summary.summary.data_points.add(time_unix_nano=T0)
    point.quantile_values.add(quantile=0.99, value=3.0)
    for signal, message in (("traces", traces), ("logs", log_request([T0, T0 + 1])), ("metrics", metrics)):
        fast = proto_request(ENDPOINTS[signal], message.SerializeToString())
        generic = otlp_json(message)
        rows = []
        for request in (fast, generic):
            out: dict[str, list[dict[str, Any]]] = {"traces": [], "logs": [], "metrics": []}
            errors: list[str] = []
            flatten_request(request, 1, out, {}, errors.append)
            assert not errors
            rows.append(out)
        assert rows[0] == rows[1], signal
        assert rows[0][signal]
    assert rows[0]["metrics"][-1]["metric"] == "gc.p99"


def test_rows_far_ahead_of_the_server_clock_are_bad_rows() -> None:
    """One sender with a wrong clock must not move event time (and the retention) years ahead."""
    now = pd.Timestamp.now(tz="UTC").value
    body = log_request([now, now + 2 * 3600 * SECOND, now + 10 * 365 * 24 * 3600 * SECOND]).SerializeToString()
    decoded, frames = OtlpDecoder().decode("logs", body, PROTOBUF)
    assert decoded.rows["logs"] == 1 and decoded.rejected == 2
    assert "ahead of the server's clock" in decoded.error_message()
    assert len(frames["logs"]) == 1


def test_a_request_sent_again_is_stored_once_also_across_a_restart_and_a_compaction(tmp_path: Path) -> None:
    """Log records and metric points have no ids: a sender's retry of the same body must not store them twice."""
    import asyncio

    import httpx

    def receiver() -> tuple[FastAPI, SegmentStore, Recorder]:
        store = SegmentStore(tmp_path, retention=pd.Timedelta(days=1), commit_interval=pd.Timedelta("50ms"),
                             max_pending_bytes=2**26)
        store.start()
        recorder = Recorder()
        app = FastAPI()
        app.include_router(ingest_router(store, recorder))
        return app, store, recorder

    body = log_request([T0 + i * SECOND for i in range(5)]).SerializeToString()
    headers = {"Content-Type": PROTOBUF}

    async def twice_at_once(app: FastAPI) -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://melt") as client:
            answers = await asyncio.gather(*(client.post("/v1/logs", content=body, headers=headers) for _ in range(2)))
        return [a.status_code for a in answers]

    app, store, recorder = receiver()
    assert asyncio.run(twice_at_once(app)) == [200, 200]  # the copy waits for the first and gets its answer
    with TestClient(app) as client:
        again = client.post("/v1/logs", content=body, headers=headers)  # a retry after the answer was lost
        assert again.status_code == 200 and answer(again, "logs") == ExportLogsServiceResponse()
        other = client.post("/v1/logs", content=log_request([T0 + 9 * SECOND]).SerializeToString(), headers=headers)
        assert other.status_code == 200
    store.close()
    assert len(store.read("logs", *EVER)) == 6
    assert [c for c in recorder.calls if c[0] == "duplicate"] == [("duplicate", "/v1/logs", 1)] * 2
    assert ("received", "logs", 5) in recorder.calls and recorder.calls.count(("received", "logs", 5)) == 1

    reader = SegmentStore(tmp_path, retention=pd.Timedelta(days=1), commit_interval=pd.Timedelta("50ms"),
                          max_pending_bytes=2**26, read_only=True)
    assert reader.compact(pd.Timestamp("2100-01-01", tz="UTC")) >= 2  # the keys travel into the merged file
    app, store, recorder = receiver()  # a restart: the keys come back from the segments
    with TestClient(app) as client:
        assert client.post("/v1/logs", content=body, headers=headers).status_code == 200
    store.close()
    assert len(store.read("logs", *EVER)) == 6 and ("duplicate", "/v1/logs", 1) in recorder.calls


def test_the_request_ledger_remembers_answers_for_a_while_and_passes_failures_on() -> None:
    import asyncio

    from melt.serve.dedup import RequestLedger, request_key

    assert request_key("/v1/logs", PROTOBUF, None, b"x") != request_key("/v1/logs", PROTOBUF, "gzip", b"x")

    async def scenario() -> None:
        ledger = RequestLedger(known=[("old", 700.0), ("recent", 5.0)], window=600.0, max_keys=3)
        assert ledger.answered("recent") == (True, None) and ledger.answered("old") == (False, None)
        first = ledger.begin("a")
        assert ledger.in_flight("a") is first
        ledger.end("a", outcome="decoded", answer=b"encoded")
        assert await first == "decoded" and ledger.answered("a") == (True, b"encoded")
        failing = ledger.begin("b")
        ledger.end("b", error=RuntimeError("disk full"))
        with pytest.raises(RuntimeError):
            await failing
        assert ledger.answered("b") == (False, None) and ledger.in_flight("b") is None  # a retry is stored
        for key in ("c", "d", "e"):
            ledger.begin(key)
            ledger.end(key, answer=b"")
        assert len(ledger) == 3 and ledger.answered("recent") == (False, None)  # the oldest went first

    asyncio.run(scenario())
