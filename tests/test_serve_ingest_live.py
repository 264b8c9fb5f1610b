"""The receiver over real HTTP on 127.0.0.1: the OpenTelemetry SDK's own exporters, and kill -9 mid-stream."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import uvicorn
from fastapi import FastAPI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from melt.serve.ingest import ingest_router
from melt.serve.segments import SegmentStore

REPO = Path(__file__).resolve().parents[1]
EVER = (pd.Timestamp("2000-01-01", tz="UTC"), pd.Timestamp("2100-01-01", tz="UTC"))
SERVER = """
import socket, sys
from pathlib import Path
import pandas as pd, uvicorn
from fastapi import FastAPI
from melt.serve.ingest import ingest_router
from melt.serve.segments import SegmentStore
store = SegmentStore(Path(sys.argv[1]), retention=pd.Timedelta(days=1), commit_interval=pd.Timedelta("20ms"),
                     max_pending_bytes=2**26)
store.start()
app = FastAPI()
app.include_router(ingest_router(store))
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(128)  # connections wait in the backlog until uvicorn takes them
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
"""


def store_at(folder: Path) -> SegmentStore:
    return SegmentStore(folder, retention=pd.Timedelta(days=1), commit_interval=pd.Timedelta("20ms"),
                        max_pending_bytes=2**26)


def spans_body(number: int, spans: int = 20) -> bytes:
    request = ExportTraceServiceRequest()
    block = request.resource_spans.add()
    block.resource.attributes.add(key="service.name").value.string_value = "checkout"
    scope = block.scope_spans.add()
    start = int(pd.Timestamp("2024-05-01", tz="UTC").value) + number * 10**9
    for i in range(spans):
        scope.spans.add(name="GET /", trace_id=number.to_bytes(16, "big"), span_id=(number * 1000 + i + 1).to_bytes(8, "big"),
                        start_time_unix_nano=start + i, end_time_unix_nano=start + i + 10**6)
    return request.SerializeToString()


def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path)], stdout=subprocess.PIPE, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        port = int(server.stdout.readline())
        acknowledged: list[int] = []
        lock, enough = threading.Lock(), threading.Event()
        numbers = iter(range(1, 100_000))

        def send() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                for number in numbers:  # shared: each request number is sent once
                    try:
                        response = client.post("/v1/traces", content=spans_body(number),
                                               headers={"Content-Type": "application/x-protobuf"})
                    except httpx.HTTPError:
                        return  # the server is gone
                    if response.status_code == 200:
                        with lock:
                            acknowledged.append(number)
                            if len(acknowledged) >= 80:
                                enough.set()

        senders = [threading.Thread(target=send) for _ in range(4)]
        for sender in senders:
            sender.start()
        assert enough.wait(30), "the server acknowledged too little"
        server.send_signal(signal.SIGKILL)  # while the senders keep sending
        server.wait(10)
        for sender in senders:
            sender.join(30)
    finally:
        server.kill()
        server.wait()
    stored = store_at(tmp_path).read("traces", *EVER)
    kept = {int(trace, 16) for trace in stored["trace_id"]}
    with lock:
        missing = sorted(set(acknowledged) - kept)
    assert not missing, f"acknowledged but lost: {missing[:10]}"
    assert len(acknowledged) >= 80
    counts = stored.groupby("trace_id").size()
    assert (counts == 20).all()  # a request is stored whole or not at all


@pytest.mark.filterwarnings("ignore:`LoggingHandler` in `opentelemetry-sdk` is deprecated:DeprecationWarning")
def test_opentelemetry_sdk_exporters_deliver_spans_logs_and_metrics(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    store = store_at(tmp_path)
    store.start()
    app = FastAPI()
    app.include_router(ingest_router(store))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        shop = Resource.create({"service.name": "shop", "service.instance.id": "shop-1"})
        tracing = TracerProvider(resource=shop)
        tracing.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{url}/v1/traces",
                                                                       compression=Compression.Gzip)))
        tracer = tracing.get_tracer("shop")
        for order in range(30):
            with tracer.start_as_current_span("POST /orders", attributes={"http.method": "POST",
                                                                          "http.status_code": 201}):
                with tracer.start_as_current_span("SELECT orders") as child:
                    child.set_attribute("db.system", "postgresql")
                    if order == 7:
                        child.record_exception(TimeoutError("db timeout"))
        logging_provider = LoggerProvider(resource=shop)
        logging_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{url}/v1/logs")))
        logger = logging.getLogger("melt.test.shop")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        handler = LoggingHandler(logger_provider=logging_provider)
        logger.addHandler(handler)
        logger.info("order 7 placed")
        logger.error("payment for order 8 failed")
        reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{url}/v1/metrics"),
                                               export_interval_millis=3_600_000)
        metering = MeterProvider(resource=shop, metric_readers=[reader])
        meter = metering.get_meter("shop")
        placed, latency, queue = (meter.create_counter("orders.placed"), meter.create_histogram("order.latency"),
                                  meter.create_up_down_counter("queue.depth"))
        for value in (10, 20):  # two exports: the cumulative counter and histogram become per-interval values
            placed.add(value)
            latency.record(value / 10)
            queue.add(1)
            time.sleep(0.02)
            assert metering.force_flush(10_000)
        assert tracing.force_flush(10_000) and logging_provider.force_flush(10_000)
        logger.removeHandler(handler)
        for provider in (tracing, logging_provider, metering):
            provider.shutdown()
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()
    bundle = store_at(tmp_path).bundle(*EVER)
    traces, logs, points = bundle.traces, bundle.logs, bundle.metrics
    assert len(traces) == 60 and set(traces["service_name"]) == {"shop"}
    assert set(traces["span_name"]) == {"POST /orders", "SELECT orders"}
    assert set(traces["attr.service.instance.id"]) == {"shop-1"}
    assert traces["parent_span_id"].notna().sum() == 30
    assert {"order 7 placed", "payment for order 8 failed"} <= set(logs["message"])
    assert logs.set_index("message").loc["payment for order 8 failed", "level"] == "ERROR"
    assert logs["message"].str.startswith("exception").sum() == 1  # the span event
    names = set(points["metric"])
    assert {"queue.depth", "orders.placed.rate", "order.latency.mean", "order.latency.p50"} <= names
    assert set(points["service"]) == {"shop"}
    assert points.loc[points["metric"] == "order.latency.mean", "value"].tolist() == [2.0]
