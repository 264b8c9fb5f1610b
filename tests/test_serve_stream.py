"""Issue 26: the same data in batch and in stream gives the same incidents.

A generated bundle with one injected fault is replayed as OTLP/HTTP requests into a running
`melt serve` app (uvicorn on 127.0.0.1, the real receiver, store, state and runner). The runner
scores it step by step; once the feed is idle it closes the last steps and resolves what is open.
The batch pipeline then scores exactly what the server stored, with the same fitted models, and
both must report the same incidents: same ids, windows, services and ranked causes, the whole
report equal. The kill -9 test restarts the server mid-replay and checks nothing acknowledged is
lost and no incident is duplicated.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import uvicorn

from melt.core.config import load_settings
from melt.core.settings import Settings
from melt.pipeline.batch import incidents_and_reports
from melt.pipeline.fitting import fit_detectors, save_models, score_all, training_split
from melt.serve.app import assemble, create_app
from melt.serve.metrics import ServeMetrics
from melt.serve.replay import otlp_requests, replay

MODELS = ["zscore", "span_latency", "call_edges", "log_templates"]
EVER = (pd.Timestamp("2000-01-01", tz="UTC"), pd.Timestamp("2100-01-01", tz="UTC"))


@pytest.fixture(scope="module")
def model_dir(tiny_bundle, tmp_path_factory) -> Path:
    settings = load_settings(env={})
    models = fit_detectors(training_split(tiny_bundle, 0.45), MODELS, settings, quiet=True)
    return save_models(models, tmp_path_factory.mktemp("models"))


def serve_settings(data_dir: Path) -> Settings:
    settings = load_settings(env={})
    return settings.with_overrides({"serve.data_dir": str(data_dir), "serve.commit_interval": "20ms",
                                    "serve.lateness": "30s", "serve.idle": "1s",
                                    "serve.sinks": ["files", "html"]})


class Server:
    """`melt serve`'s app under uvicorn in a thread, on a free port."""

    def __init__(self, settings: Settings, model_dir: Path) -> None:
        self.metrics = ServeMetrics()
        self.runner, self.store, self.state = assemble(settings, model_dir, self.metrics)
        self.runner.poll, self.runner.quiet = 0.05, True
        self.app = create_app(settings, model_dir, runner=self.runner, store=self.store, state=self.state,
                              metrics=self.metrics)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.server.started
        return self

    def __exit__(self, *_) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def settled(server: Server, timeout: float = 120.0) -> None:
    """Wait until the runner has closed every step of the feed and resolved every incident."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        newest = server.store.max_time()
        position = server.state.position()
        if newest is not None and position is not None and position > newest and server.state.open_count() == 0 \
                and not server.state.pending_deliveries():
            return
        time.sleep(0.2)
    raise AssertionError(f"the runner did not settle: position {server.state.position()}, error {server.runner.error}")


def batch_reports(settings: Settings, model_dir: Path, bundle) -> list[dict]:
    from melt.pipeline.fitting import load_models

    models = load_models(model_dir)
    scores = score_all(models, bundle, quiet=True)
    return incidents_and_reports(scores, {name: m.signal for name, m in models.items()}, bundle, settings)[1]


def test_the_same_data_in_batch_and_in_stream_gives_the_same_incidents(tiny_bundle, model_dir, tmp_path) -> None:
    settings = serve_settings(tmp_path / "serve")
    with Server(settings, model_dir) as server:
        stats = replay(server.url, otlp_requests(tiny_bundle), threads=4)
        assert not stats.failed and stats.rows > 0
        settled(server)
        streamed = {r["report"]["incident_id"]: r for r in server.state.latest_reports()}
        stored = server.store.bundle(*EVER)
    batch = {r["incident_id"]: r for r in batch_reports(settings, model_dir, stored)}
    assert batch, "the injected fault should open an incident"
    print(f"{len(batch)} incident(s), {stats.rows} rows in {stats.requests} requests; stream versions:",
          {i: r["version"] for i, r in streamed.items()})
    assert sorted(streamed) == sorted(batch)
    for incident_id, report in batch.items():
        assert streamed[incident_id]["status"] == "resolved"
        assert streamed[incident_id]["report"] == json.loads(json.dumps(report, default=str)), incident_id
    files = json.loads((tmp_path / "serve" / "reports" / "index.json").read_text())
    assert sorted(i["incident_id"] for i in files["incidents"]) == sorted(batch)
    pages = tmp_path / "serve" / "reports" / "html"
    for incident_id in batch:  # each page drawn with the detail stored beside its version
        page = (pages / f"{incident_id}.html").read_text()
        assert incident_id in page and "timeline" in page.lower()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(model_dir: Path, config: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "melt.cli", "--config", str(config), "serve", "--model",
                                str(model_dir), "--port", str(port), "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.1)
    raise AssertionError("melt serve did not start")


def step_processes(pid: int) -> list[int]:
    """The pids of `melt serve`'s step processes among its children (Linux /proc): multiprocessing's
    ``spawn_main`` children, not its resource tracker."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for child in (task / "children").read_text().split():
                if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text():
                    found.append(int(child))
        except FileNotFoundError:
            continue
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads children from Linux /proc")
def test_kill_9_during_ingest_loses_nothing_and_duplicates_nothing(tiny_bundle, model_dir, tmp_path) -> None:
    from melt.serve.replay import send
    from melt.serve.state import StateDB
    from tests.local_servers import WebhookReceiver

    requests = list(otlp_requests(tiny_bundle))
    data_dir = tmp_path / "serve"
    with WebhookReceiver() as receiver:
        config = tmp_path / "config.yaml"
        config.write_text(json.dumps({
            "serve": {"data_dir": str(data_dir), "commit_interval": "20ms", "idle": "1s", "sinks": ["files", "webhook"]},
            "report": {"webhook": {"url": receiver.url + "/tickets", "max_retries": 0}}}))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_serve(model_dir, config, port)
        acknowledged: list[int] = []
        cut = len(requests) * 2 // 3
        for number, request in enumerate(requests[:cut]):  # the runner scores and delivers meanwhile
            send(url, request)
            acknowledged.append(number)
        scorers = step_processes(server.pid)
        assert len(scorers) == 1, "melt serve scores in one child process"
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        deadline = time.monotonic() + 10
        while running(scorers[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(scorers[0]), "the step process outlived melt serve"
        killed_at = StateDB(data_dir / "serve.db").position()
        assert killed_at is not None, "the kill should come after some steps were scored"
        server = start_serve(model_dir, config, port)
        try:
            send(url, requests[cut - 1])  # the last answer before the kill was lost: the sender retries it
            for request in requests[cut:]:  # a sender goes on with what was not acknowledged
                send(url, request)
            state = StateDB(data_dir / "serve.db")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                position = state.position()
                if position is not None and state.open_count() == 0 and not state.pending_deliveries() \
                        and position > max(r.newest for r in requests):
                    break
                time.sleep(0.3)
            else:
                raise AssertionError(f"melt serve did not settle: position {state.position()}")
            reports = {r["report"]["incident_id"]: r for r in state.latest_reports()}
            versions = [v for incident_id in reports for v in state.versions(incident_id)]
        finally:
            server.send_signal(signal.SIGTERM)
            assert server.wait(30) == 0
    from melt.serve.segments import SegmentStore

    stored = SegmentStore(data_dir, retention=pd.Timedelta("3650D"), commit_interval=pd.Timedelta("20ms"),
                          max_pending_bytes=2**26).bundle(*EVER)
    sent_rows = {"/v1/traces": 0, "/v1/logs": 0, "/v1/metrics": 0}
    for request in requests:
        sent_rows[request.path] += request.rows
    assert len(stored.traces) == sent_rows["/v1/traces"]  # nothing acknowledged was lost, nothing stored twice
    assert len(stored.logs) == sent_rows["/v1/logs"]
    batch = {r["incident_id"]: r for r in batch_reports(serve_settings(data_dir), model_dir, stored)}
    assert sorted(reports) == sorted(batch)  # no incident duplicated or lost across the restart
    for incident_id, report in batch.items():
        assert reports[incident_id]["report"] == json.loads(json.dumps(report, default=str))
    keys = [request["headers"]["idempotency-key"] for request in receiver.requests]
    assert sorted(set(keys)) == sorted(f"{v['report']['fingerprint']}-v{v['version']}" for v in versions)
    # one ticket per version: a version is resent only when the kill fell between its POST and the
    # record of it, and then with the same idempotency key
    assert len(receiver.tickets) == len(versions)
    print(f"killed at step {killed_at}; {len(reports)} incident(s), {len(versions)} version(s), {len(keys)} POSTs")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads children from Linux /proc")
def test_a_step_process_that_dies_is_started_again(model_dir, tmp_path) -> None:
    import httpx

    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"serve": {"data_dir": str(tmp_path / "serve"), "idle": "1s"}}))
    port = free_port()
    server = start_serve(model_dir, config, port)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while httpx.get(url + "/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        first = step_processes(server.pid)
        assert len(first) == 1
        os.kill(first[0], signal.SIGKILL)  # as the kernel's OOM killer would
        down = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = httpx.get(url + "/readyz")
            down = down or (ready.json()["error"] if ready.status_code == 503 else None)
            again = [pid for pid in step_processes(server.pid) if pid != first[0] and running(pid)]
            if again and ready.status_code == 200:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the step process was not started again")
        assert down is not None and "step runner" in down  # /readyz said so meanwhile
        assert server.poll() is None
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
