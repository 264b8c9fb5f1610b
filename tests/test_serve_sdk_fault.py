"""Issue 26 end to end: a service instrumented with the OpenTelemetry SDK sends to `melt serve`, a fault
is injected, and the API shows the incident within two steps.

A small fake shop (``frontend`` calls ``cart`` and ``payment``) is instrumented with the real
OpenTelemetry Python SDK and its OTLP/HTTP exporters: per service a ``TracerProvider`` with a
``BatchSpanProcessor(OTLPSpanExporter)``, a ``LoggerProvider`` with a
``BatchLogRecordProcessor(OTLPLogExporter)`` and a ``MeterProvider`` with a
``PeriodicExportingMetricReader(OTLPMetricExporter)``, each with its own ``service.name``. Calls
between services carry the W3C ``traceparent`` header (inject in the caller, extract in the
callee), so the callee's server span is the child of the caller's client span and melt sees the
call graph.

1. Normal traffic of the shop goes through the same exporters to a throwaway OTLP/HTTP collector,
   which maps it with melt's own receiver mapping (:class:`melt.serve.otlp_http.OtlpDecoder`);
   ``span_latency`` and ``log_templates`` are fitted on it and saved as ``melt train`` does.
2. The real ``melt serve`` CLI runs as a subprocess with those models and a test config.
3. Live traffic goes to it: normal, then ``payment``'s server spans get 20x slower and it logs
   errors, then normal again. The test asserts no incident during the normal phase, an incident
   whose top-ranked cause is ``payment`` within two steps, and that every span and log record the
   SDK sent was received (and some metric points).

Event time is simulated: spans and log records carry explicit timestamps, one ``serve.step`` (1 min)
of traffic is generated in a fraction of a second and flushed before the next one, so the server's
steps close on the lateness rule alone, whatever the machine's speed. The simulated clock runs a
couple of minutes ahead of the wall clock: the SDK stamps metric points with the wall clock, which
must stay behind the event time of the spans or it would close their steps early (the points are
stored and counted, not scored, as any late data is). The receiver refuses rows more than an hour
ahead of its clock; the run spans about ten minutes. Random draws and trace/span ids are seeded,
so every run scores the same data.

The config (:data:`CONFIG`, JSON, given with ``--config``) keeps the production step, ``serve.step``
= ``ensemble.window`` = the detectors' windows = 1 min (simulated time makes shorter steps
unnecessary), with ``serve.lateness`` 10 s, a 20 ms group commit, the files sink and the template
explainer without its cache (nothing written outside ``tmp_path``). ``serve.idle`` is 2 min, longer
than any wait here, so a stalled test can never have a half-flushed step closed for it.

"Within two steps" means: with the fault starting at ``fault_start`` (a step boundary; every
request from then on is slow), the incident's first report version is produced by a step ending no
later than ``fault_start + 2 * serve.step`` (its ``step_end`` in ``/api/incidents/{id}/versions``),
and it is visible in ``GET /api/incidents`` the first time the server's scored position
(``melt_position_timestamp_seconds`` in ``/metrics``, read before the list) has reached that time.
In wall terms the server scores that step once data ``serve.lateness`` newer has arrived.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from opentelemetry import trace  # noqa: E402 (after the skips)
from opentelemetry._logs import Logger, SeverityNumber  # noqa: E402
from opentelemetry.context import Context  # noqa: E402
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.metrics import Counter, Histogram  # noqa: E402
from opentelemetry.sdk._logs import LoggerProvider  # noqa: E402
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.id_generator import IdGenerator  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator  # noqa: E402

from melt.core.bundle import MeltBundle  # noqa: E402
from melt.core.config import load_settings  # noqa: E402
from melt.pipeline.fitting import fit_detectors, save_models  # noqa: E402
from melt.serve.otlp_http import OtlpDecoder, export_response, inflate, media_type  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = ["span_latency", "log_templates"]
CONFIG: dict[str, Any] = {
    "ensemble": {"window": "1m"},
    "detectors": {"span_latency": {"window": "1m"}, "log_templates": {"window": "1m"}},
    "serve": {"step": "1m", "lateness": "10s", "idle": "2m", "commit_interval": "20ms", "sinks": ["files"]},
    "explain": {"provider": "template", "cache": False},
}
TRAIN_MINUTES = 60
NORMAL_STEPS, FAULT_STEPS, AFTER_STEPS = 5, 3, 2
REQUESTS_PER_MINUTE = 40
SLOWDOWN = 20.0  # payment's server spans during the fault
NET_NS = 1_000_000  # one way between two services
QUIET_TAIL = pd.Timedelta("5s")  # no request starts this close to a step's end: each step's traces are whole
TIMEOUT_S = 90.0  # the most any one wait may take (the whole test normally takes about 15 s)
EXPORT_TIMEOUT_S = 30.0  # per export: generous, so a slow CI machine does not make the SDK give up
PROPAGATOR = TraceContextTextMapPropagator()


# ---------------------------------------------------------------------------------------- the fake shop
class SeededIds(IdGenerator):
    """Trace and span ids from a seeded generator: the same ids every run."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    def generate_span_id(self) -> int:
        return self.random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self.random.getrandbits(128) or 1


class Instrumented:
    """One service's three SDK pipelines, each exporting over OTLP/HTTP to ``base``, with its own
    ``service.name``."""

    def __init__(self, name: str, base: str, ids: IdGenerator) -> None:
        resource = Resource.create({"service.name": name, "service.instance.id": f"{name}-1"})
        self.tracing = TracerProvider(resource=resource, id_generator=ids)
        self.tracing.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{base}/v1/traces", timeout=EXPORT_TIMEOUT_S),
            max_queue_size=8192, max_export_batch_size=4096, schedule_delay_millis=500))
        self.logging = LoggerProvider(resource=resource)
        self.logging.add_log_record_processor(BatchLogRecordProcessor(
            OTLPLogExporter(endpoint=f"{base}/v1/logs", timeout=EXPORT_TIMEOUT_S),
            max_queue_size=8192, max_export_batch_size=4096, schedule_delay_millis=500))
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{base}/v1/metrics", timeout=EXPORT_TIMEOUT_S), export_interval_millis=2_000)
        self.metering = MeterProvider(resource=resource, metric_readers=[reader])
        self.tracer: trace.Tracer = self.tracing.get_tracer(f"shop.{name}")
        self.logger: Logger = self.logging.get_logger(f"shop.{name}")
        meter = self.metering.get_meter(f"shop.{name}")
        self.requests: Counter = meter.create_counter("app.server.requests", unit="1")
        self.duration: Histogram = meter.create_histogram("app.server.duration", unit="ms")

    def flush(self) -> None:
        assert self.tracing.force_flush() and self.logging.force_flush()
        assert self.metering.force_flush(int(EXPORT_TIMEOUT_S * 1000))

    def shutdown(self) -> None:
        for provider in (self.tracing, self.logging, self.metering):
            provider.shutdown()


class FakeShop:
    """``frontend`` (``GET /checkout`` calls ``cart`` then ``payment``; ``GET /basket`` calls ``cart``).

    Times are simulated (nanoseconds since the epoch); latencies are log-normal around fixed
    medians. During a fault ``payment`` is :data:`SLOWDOWN` times slower and logs an error per
    charge, and ``frontend`` warns about the slow checkouts (a symptom the ranking must see past).
    """

    def __init__(self, base: str, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        ids = SeededIds(seed)
        self.services = {name: Instrumented(name, base, ids) for name in ("frontend", "cart", "payment")}
        self.spans = self.logs = 0
        self.order = 0

    # ------------------------------------------------------------------ traffic
    def run(self, start: pd.Timestamp, length: pd.Timedelta, fault: bool) -> None:
        """Requests starting in ``[start, start + length - QUIET_TAIL)``, Poisson arrivals."""
        count = int(self.rng.poisson(REQUESTS_PER_MINUTE * length / pd.Timedelta("1m")))
        span_ns = (length - QUIET_TAIL).value
        for offset in np.sort(self.rng.integers(0, span_ns, count)):
            if self.rng.random() < 0.7:
                self.checkout(start.value + int(offset), fault)
            else:
                self.basket(start.value + int(offset))

    def checkout(self, t: int, fault: bool) -> None:
        frontend = self.services["frontend"]
        self.order += 1
        root = frontend.tracer.start_span("GET /checkout", context=Context(), kind=SpanKind.SERVER, start_time=t,
                                          attributes={"http.request.method": "GET", "http.response.status_code": 200})
        inside = trace.set_span_in_context(root)
        at = t + self.ms(3.0)
        items = int(self.rng.integers(1, 6))
        at = self.call("cart", "GET cart", "GET /cart", inside, at, self.ms(12.0),
                       lambda end, ctx: self.log("cart", end, ctx, f"cart loaded with {items} items"))
        charge = self.ms(40.0) * (SLOWDOWN if fault else 1.0)

        def charged(end: int, ctx: Context) -> None:
            if fault:
                self.log("payment", end, ctx, f"charge failed for order {self.order}: card processor timed out "
                                              f"after {charge / 1e6:.0f} ms", SeverityNumber.ERROR)
            else:
                self.log("payment", end, ctx, f"charge accepted for order {self.order} amount "
                                              f"{self.rng.integers(5, 300)} EUR")

        at = self.call("payment", "POST payment", "POST /charge", inside, at + self.ms(1.0), int(charge), charged)
        end = at + self.ms(2.0)
        took = (end - t) / 1e6
        self.log("frontend", end, inside, f"checkout completed for order {self.order} in {took:.0f} ms")
        if took > 400:
            self.log("frontend", end, inside, f"checkout for order {self.order} is slow: {took:.0f} ms",
                     SeverityNumber.WARN)
        self.finish(frontend, root, "GET /checkout", t, end)

    def basket(self, t: int) -> None:
        frontend = self.services["frontend"]
        root = frontend.tracer.start_span("GET /basket", context=Context(), kind=SpanKind.SERVER, start_time=t,
                                          attributes={"http.request.method": "GET", "http.response.status_code": 200})
        inside = trace.set_span_in_context(root)
        items = int(self.rng.integers(0, 6))
        at = self.call("cart", "GET cart", "GET /cart", inside, t + self.ms(2.0), self.ms(12.0),
                       lambda end, ctx: self.log("cart", end, ctx, f"cart loaded with {items} items"))
        end = at + self.ms(1.5)
        self.log("frontend", end, inside, f"basket viewed with {items} items")
        self.finish(frontend, root, "GET /basket", t, end)

    def call(self, callee: str, client_name: str, server_name: str, parent: Context, start: int, work: int,
             logs: Callable[[int, Context], None]) -> int:
        """A client span in ``frontend``, the callee's server span below it (``traceparent`` over the
        wire); the client span's end."""
        frontend, service = self.services["frontend"], self.services[callee]
        client = frontend.tracer.start_span(client_name, context=parent, kind=SpanKind.CLIENT, start_time=start,
                                            attributes={"peer.service": callee, "http.response.status_code": 200})
        headers: dict[str, str] = {}
        PROPAGATOR.inject(headers, context=trace.set_span_in_context(client))
        arrived = start + NET_NS
        server = service.tracer.start_span(server_name, context=PROPAGATOR.extract(headers), kind=SpanKind.SERVER,
                                           start_time=arrived, attributes={"http.response.status_code": 200})
        done = arrived + work
        logs(done, trace.set_span_in_context(server))
        self.finish(service, server, server_name, arrived, done)
        end = done + NET_NS
        client.end(end_time=end)
        self.spans += 1
        return end

    # ------------------------------------------------------------------ helpers
    def ms(self, median: float) -> int:
        """A log-normal latency around ``median`` milliseconds, in nanoseconds."""
        return int(self.rng.lognormal(np.log(median), 0.25) * 1e6)

    def finish(self, service: Instrumented, span: trace.Span, operation: str, start: int, end: int) -> None:
        span.end(end_time=end)
        self.spans += 1
        service.requests.add(1, {"operation": operation})
        service.duration.record((end - start) / 1e6, {"operation": operation})

    def log(self, service: str, at: int, context: Context, body: str,
            severity: SeverityNumber = SeverityNumber.INFO) -> None:
        self.services[service].logger.emit(timestamp=at, context=context, severity_number=severity,
                                           severity_text=severity.name, body=body)
        self.logs += 1

    def flush(self) -> None:
        """Everything generated so far is exported and acknowledged (spans, then logs, then metrics)."""
        for service in self.services.values():
            service.flush()

    def shutdown(self) -> None:
        for service in self.services.values():
            service.shutdown()


@contextmanager
def shop_sending_to(base: str, seed: int) -> Iterator[FakeShop]:
    shop = FakeShop(base, seed)
    try:
        yield shop
    finally:
        shop.shutdown()


# ---------------------------------------------------------------------------------------- training
class Collector:
    """A throwaway OTLP/HTTP endpoint on 127.0.0.1 that maps what it receives with melt's receiver mapping."""

    def __init__(self) -> None:
        self.decoder = OtlpDecoder()
        self.frames: dict[str, list[pd.DataFrame]] = {"traces": [], "logs": [], "metrics": []}
        self.rejected: list[str] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                signal_name = {"/v1/traces": "traces", "/v1/logs": "logs", "/v1/metrics": "metrics"}[self.path]
                body = inflate(self.rfile.read(int(self.headers["Content-Length"])),
                               self.headers.get("Content-Encoding"), 2**28)
                kind = media_type(self.headers.get("Content-Type"))
                with collector.lock:
                    decoded, frames = collector.decoder.decode(signal_name, body, kind)
                    for name, frame in frames.items():
                        collector.frames[name].append(frame)
                    collector.rejected += decoded.errors
                answer = export_response(signal_name, decoded, kind)
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Collector:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def bundle(self) -> MeltBundle:
        with self.lock:
            return MeltBundle(traces=pd.concat(self.frames["traces"], ignore_index=True),
                              logs=pd.concat(self.frames["logs"], ignore_index=True))


def train(config: Path, out: Path, start: pd.Timestamp) -> Path:
    """Fit :data:`MODELS` on :data:`TRAIN_MINUTES` of the shop's normal traffic, sent through the SDK."""
    with Collector() as collector:
        with shop_sending_to(collector.url, seed=1) as shop:
            for minute in range(TRAIN_MINUTES):
                shop.run(start + pd.Timedelta(minutes=minute), pd.Timedelta("1m"), fault=False)
                if minute % 10 == 9:
                    shop.flush()
            shop.flush()
            sent = (shop.spans, shop.logs)
        bundle = collector.bundle()
        assert not collector.rejected, collector.rejected[:3]
    assert (len(bundle.traces), len(bundle.logs)) == sent
    assert set(bundle.traces["service_name"]) == {"frontend", "cart", "payment"}
    calls = bundle.traces.merge(bundle.traces, left_on=["trace_id", "parent_span_id"],
                                right_on=["trace_id", "span_id"], suffixes=("", "_parent"))
    across = calls[calls["service_name"] != calls["service_name_parent"]]
    assert set(zip(across["service_name_parent"], across["service_name"], strict=True)) == {
        ("frontend", "cart"), ("frontend", "payment")}  # server spans below the callers' client spans
    assert set(across["span_kind"]) == {"server"} and set(across["span_kind_parent"]) == {"client"}
    settings = load_settings(config, env={})
    return save_models(fit_detectors(bundle, MODELS, settings, quiet=True), out)


# ---------------------------------------------------------------------------------------- the server
@dataclass
class Served:
    url: str
    process: subprocess.Popen


@contextmanager
def melt_serve(config: Path, models: Path, data_dir: Path, log: Path) -> Iterator[Served]:
    """The `melt serve` CLI in a subprocess on a free port, once ready; SIGTERM at the end (kill
    after 30 s)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MELT_")}
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "melt.cli", "--config", str(config), "serve", "--model",
                                    str(models), "--port", "0", "--data-dir", str(data_dir)],
                                   stdout=subprocess.DEVNULL, stderr=sink, cwd=REPO, env=env)
    try:
        url = wait_for(lambda: _listening(log), "melt serve to listen", process, log)
        wait_for(lambda: _ready(url), "melt serve to be ready", process, log)
        yield Served(url, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _listening(log: Path) -> str | None:
    match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
    return match.group(1) if match else None


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(probe: Callable[[], Any], what: str, process: subprocess.Popen | None = None,
             log: Path | None = None, timeout: float = TIMEOUT_S) -> Any:
    """Poll ``probe`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.1)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"gave up waiting for {what}\n{tail}")


@dataclass
class Look:
    """One look at the API: the scored position from ``/metrics`` (read first), then the incident
    list with the position ``/api/incidents`` read after its rows."""

    position: pd.Timestamp | None
    incidents: list[dict[str, Any]]
    listed_at: pd.Timestamp | None


def prometheus(client: httpx.Client) -> dict[str, float]:
    """``/metrics`` as ``{series: value}`` (labels kept in the series name)."""
    values = {}
    for line in client.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def look(client: httpx.Client) -> Look:
    seconds = prometheus(client).get("melt_position_timestamp_seconds", float("nan"))
    position = None if np.isnan(seconds) else pd.Timestamp(seconds, unit="s", tz="UTC")
    listed = client.get("/api/incidents").json()
    listed_at = None if listed["position"] is None else pd.Timestamp(listed["position"])
    return Look(position, listed["incidents"], listed_at)


# ---------------------------------------------------------------------------------------- the test
def test_sdk_traffic_with_a_fault_shows_the_incident_within_two_steps(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy"):  # the SDK's requests and httpx go straight to 127.0.0.1
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    step = load_settings(config, env={}).serve.step
    start = (pd.Timestamp.now(tz="UTC") + pd.Timedelta("2min")).ceil(step)  # ahead of the metric points' clock
    fault_start = start + NORMAL_STEPS * step
    fault_end = fault_start + FAULT_STEPS * step
    models = train(config, tmp_path / "models", start - pd.Timedelta("3h"))
    log = tmp_path / "serve.log"
    looks: list[Look] = []
    with melt_serve(config, models, tmp_path / "serve", log) as served, \
            httpx.Client(base_url=served.url, timeout=10) as client:
        with shop_sending_to(served.url, seed=2) as shop:
            for number in range(NORMAL_STEPS + FAULT_STEPS + AFTER_STEPS):
                begins = start + number * step
                shop.run(begins, step, fault=fault_start <= begins < fault_end)
                shop.flush()  # the step's data is acknowledged before the next step's is made
                looks.append(look(client))
                if begins + step == fault_start:  # the normal phase is sent: every step it closes is scored
                    watch(client, looks, fault_start - step, log)
                    assert not looks[-1].incidents, f"an incident on normal traffic: {looks[-1].incidents}"
            sent_spans, sent_logs = shop.spans, shop.logs
            detected_by = fault_start + 2 * step
            watch(client, looks, fault_end, log)
        counts = prometheus(client)
        incidents = client.get("/api/incidents").json()["incidents"]
        assert len(incidents) == 1, f"one fault, one incident: {incidents}\n{log.read_text()[-3000:]}"
        incident_id = incidents[0]["incident_id"]
        answer = client.get(f"/api/incidents/{incident_id}")
        report = answer.json()
        versions = client.get(f"/api/incidents/{incident_id}/versions").json()["versions"]
    assert served.process.returncode == 0, log.read_text()[-3000:]  # SIGTERM stops it cleanly

    # nothing during the normal phase: no look while only normal steps were scored lists an incident
    normal = [item for item in looks if item.listed_at is not None and item.listed_at <= fault_start]
    assert normal and all(not item.incidents for item in normal), normal
    # the incident: published by the step ending two steps after the fault started, at the latest
    first = versions[0]
    published = pd.Timestamp(first["step_end"])
    delay = (published - fault_start) / step
    seen = [item for item in looks if item.position is not None and item.position >= detected_by]
    print(f"\nfault at {fault_start.isoformat()}; {incident_id} v1 from the step ending {published.isoformat()}: "
          f"{delay:g} step(s); window {report['window']}; causes "
          f"{[(c['service'], round(c['score'], 3)) for c in report['root_cause_analysis']['ranked_causes']]}; "
          f"{len(normal)} looks at normal steps only; first look past {detected_by.isoformat()} at position "
          f"{seen[0].position.isoformat() if seen else None}")
    assert fault_start < published <= detected_by, f"published by the step ending {published}, fault at {fault_start}"
    assert fault_start <= pd.Timestamp(report["window"]["start"]) < detected_by
    assert seen and any(i["incident_id"] == incident_id for i in seen[0].incidents), \
        "the API did not list the incident once the position passed two steps after the fault"
    # ... ranking the faulty service first
    assert answer.headers["X-Melt-Incident-Version"] == str(len(versions))
    assert "payment" in report["services"]
    assert report["root_cause_analysis"]["ranked_causes"][0]["service"] == "payment", report["root_cause_analysis"]
    assert first["report"]["root_cause_analysis"]["ranked_causes"][0]["service"] == "payment"
    # every span and log record the SDK sent arrived, and metric points did too
    assert counts["melt_received_spans_total"] == sent_spans
    assert counts["melt_received_logs_total"] == sent_logs
    assert counts["melt_received_points_total"] > 0
    assert not any(name.startswith("melt_rejected_rows_total") and value for name, value in counts.items())


def watch(client: httpx.Client, looks: list[Look], position: pd.Timestamp, log: Path) -> None:
    """Look (and keep every look) until the server has scored up to ``position``."""

    def probe() -> bool:
        looks.append(look(client))
        return looks[-1].position is not None and looks[-1].position >= position

    wait_for(probe, f"the server to score up to {position.isoformat()}", log=log)
