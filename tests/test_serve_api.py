"""`melt serve`'s HTTP app through FastAPI's TestClient: every API endpoint's answers and errors, the
page, /metrics as Prometheus parses it, and the life cycle. The step runner is a small fake here
(what it computes is tested with the stream); the state database and segment store are real."""

from __future__ import annotations

import copy
import io
import json
import time
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from melt.core.bundle import MeltBundle
from melt.core.config import default_settings
from melt.core.errors import MeltError
from melt.reports.report import validate_report
from melt.serve.app import create_app
from melt.serve.metrics import ServeMetrics
from melt.serve.segments import SegmentStore
from melt.serve.state import StateDB


class FakeRunner:
    """The runner's interface (alive, position, start, stop, explain, detect_bundle), recording calls."""

    def __init__(self, state: StateDB, answer: list[dict]) -> None:
        self.state, self.answer = state, answer
        self.alive = True
        self.calls: list[str] = []
        self.bundles: list[MeltBundle] = []
        self.explain_error: Exception | None = None
        self.detect_error: Exception | None = None

    @property
    def position(self) -> pd.Timestamp | None:
        return self.state.position()

    def start(self) -> None:
        self.calls.append("start")

    def stop(self) -> None:
        self.calls.append("stop")
        self.alive = False

    def explain(self, incident_id: str) -> dict:
        if self.explain_error is not None:
            raise self.explain_error
        report = self.state.incident(incident_id)
        return {**report, "explanation": "The LLM says: checkout is slow.", "explanation_source": "llm:fake"}

    def detect_bundle(self, bundle: MeltBundle) -> list[dict]:
        if self.detect_error is not None:
            raise self.detect_error
        self.bundles.append(bundle)
        return self.answer


def variant(report: dict, incident_id: str, start: str, minutes: int, services: list[str]) -> dict:
    """The real report under another id, window and set of services (still schema-valid)."""
    out = copy.deepcopy(report)
    begin = pd.Timestamp(start)
    out["incident_id"] = incident_id
    out["fingerprint"] = f"{abs(hash(incident_id)) % 16**20:020x}"
    out["window"] = {"start": begin.isoformat(), "end": (begin + pd.Timedelta(minutes=minutes)).isoformat()}
    out["services"] = services
    return validate_report(out)


@pytest.fixture
def server(tmp_path, tiny_report):
    """An app over a real state database and segment store, two incidents committed, and its client."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "models.json").write_text(json.dumps({"detectors": ["zscore"]}))
    settings = default_settings().with_overrides({"serve.data_dir": str(tmp_path / "data")})
    settings.serve.data_dir.mkdir(parents=True)
    state = StateDB(settings.serve.db, settings.serve.sinks)
    store = SegmentStore(settings.serve.data_dir, retention=settings.serve.retention,
                         commit_interval=pd.Timedelta("10ms"), max_pending_bytes=2**20)
    first = variant(tiny_report, "INC-A", "2024-05-01T10:00:00Z", 5, ["cart", "redis"])
    second = variant(tiny_report, "INC-B", "2024-05-01T11:00:00Z", 8, ["checkout", "payment"])
    state.commit_step(pd.Timestamp("2024-05-01T10:06:00Z"), [{"report": first, "status": "open"}])
    state.commit_step(pd.Timestamp("2024-05-01T11:10:00Z"), [{"report": first, "status": "resolved"},
                                                             {"report": second, "status": "open"}])
    runner = FakeRunner(state, [second])
    metrics = ServeMetrics()
    app = create_app(settings, models, runner=runner, store=store, state=state, metrics=metrics)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, runner, state, metrics, settings, {"INC-A": first, "INC-B": second}
    assert runner.calls == ["start", "stop"]


def one_line_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


def test_list_incidents_with_filters(server) -> None:
    client, *_ = server
    ids = lambda query: [i["incident_id"] for i in client.get(f"/api/incidents{query}").json()["incidents"]]  # noqa: E731
    body = client.get("/api/incidents").json()
    assert body["count"] == 2 and body["position"] == "2024-05-01T11:10:00+00:00"
    assert [(i["incident_id"], i["status"], i["version"]) for i in body["incidents"]] == [
        ("INC-B", "open", 1), ("INC-A", "resolved", 2)]
    assert ids("?open=true") == ["INC-B"]
    assert ids("?open=false") == ["INC-A"]
    assert ids("?service=redis") == ["INC-A"]
    assert ids("?service=nobody") == []
    assert ids("?since=2024-05-01T10:30:00Z") == ["INC-B"]
    assert ids("?since=2024-05-01T10:05:00") == ["INC-B", "INC-A"]
    assert ids("?limit=1") == ["INC-B"]
    assert "since" in one_line_error(client.get("/api/incidents?since=yesterday-ish"), 422)
    assert "open" in one_line_error(client.get("/api/incidents?open=maybe"), 422)
    assert "limit" in one_line_error(client.get("/api/incidents?limit=0"), 422)


def test_one_incident_its_versions_and_unknown_ids(server) -> None:
    client, _, _, _, _, reports = server
    response = client.get("/api/incidents/INC-A")
    assert response.status_code == 200
    assert validate_report(response.json()) == reports["INC-A"]
    assert response.headers["x-melt-incident-version"] == "2"
    assert response.headers["x-melt-incident-status"] == "resolved"
    versions = client.get("/api/incidents/INC-A/versions").json()["versions"]
    assert [(v["version"], v["status"]) for v in versions] == [(1, "open"), (2, "resolved")]
    assert {d["sink"] for d in versions[0]["deliveries"]} == {"files"}
    assert one_line_error(client.get("/api/incidents/INC-Z"), 404) == "unknown incident 'INC-Z'"
    assert one_line_error(client.get("/api/incidents/INC-Z/versions"), 404) == "unknown incident 'INC-Z'"


def test_explain_on_demand(server) -> None:
    client, runner, *_ = server
    explained = client.post("/api/incidents/INC-B/explain")
    assert explained.status_code == 200
    assert validate_report(explained.json())["explanation_source"] == "llm:fake"
    assert "unknown incident" in one_line_error(client.post("/api/incidents/INC-Z/explain"), 404)
    runner.explain_error = MeltError("explain.base_url: connection refused\n(after 3 tries)")
    message = one_line_error(client.post("/api/incidents/INC-B/explain"), 502)
    assert message == "explanation failed: explain.base_url: connection refused (after 3 tries)"


def _files(bundle_dir: Path, names: list[str]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, (bundle_dir / name).read_bytes(), "application/octet-stream")) for name in names]


def test_detect_an_uploaded_bundle(server, tiny_dir) -> None:
    client, runner, _, _, _, reports = server
    response = client.post("/api/detect", files=_files(tiny_dir, ["metrics.parquet", "traces.parquet", "logs.parquet"]))
    assert response.status_code == 200, response.text
    assert response.json() == {"reports": [reports["INC-B"]], "count": 1}
    (bundle,) = runner.bundles
    assert bundle.signals() == ["metrics", "logs", "traces"]
    assert bundle.summary() == {name: n for name, n in MeltBundle.read(tiny_dir).summary().items() if name != "events"}


def test_bad_uploads_are_one_line_4xx(server, tiny_dir) -> None:
    client, runner, *_ = server
    wrong_name = [("files", ("spans.parquet", (tiny_dir / "traces.parquet").read_bytes(), "application/octet-stream"))]
    assert "spans.parquet is not one of" in one_line_error(client.post("/api/detect", files=wrong_name), 422)
    twice = _files(tiny_dir, ["logs.parquet", "logs.parquet"])
    assert "logs.parquet given twice" in one_line_error(client.post("/api/detect", files=twice), 422)
    garbage = [("files", ("metrics.parquet", b"not parquet at all", "application/octet-stream"))]
    message = one_line_error(client.post("/api/detect", files=garbage), 400)
    assert message.startswith("metrics.parquet: cannot read parquet") and "melt-upload" not in message
    buffer = io.BytesIO()
    pd.DataFrame({"when": [1, 2], "what": ["a", "b"]}).to_parquet(buffer)
    wrong_columns = [("files", ("logs.parquet", buffer.getvalue(), "application/octet-stream"))]
    assert "logs" in one_line_error(client.post("/api/detect", files=wrong_columns), 400)
    assert "files" in one_line_error(client.post("/api/detect"), 422)
    assert runner.bundles == []
    runner.detect_error = RuntimeError("boom\nin the runner")
    message = one_line_error(client.post("/api/detect", files=_files(tiny_dir, ["traces.parquet"])), 500)
    assert message == "internal error: RuntimeError: boom in the runner"


def test_health_and_readiness(server) -> None:
    client, runner, _, _, settings, _ = server
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"models": True, "store": True, "runner": True}
    runner.alive = False
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["error"] == "not ready: the step runner is not running"
    assert not_ready.json()["checks"]["runner"] is False
    runner.alive = True
    settings.serve.data_dir.rename(settings.serve.data_dir.with_name("moved"))
    gone = client.get("/readyz")
    assert gone.status_code == 503 and "is not writable" in gone.json()["error"]
    settings.serve.data_dir.with_name("moved").rename(settings.serve.data_dir)


def test_metrics_parse_as_prometheus_exposition(server) -> None:
    client, _, _, metrics, *_ = server
    now_ns = pd.Timestamp("2024-05-01T11:12:30Z").value - 1  # the newest event time received
    logs = {"resourceLogs": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "cart"}}]},
                              "scopeLogs": [{"logRecords": [
                                  {"timeUnixNano": str(now_ns), "severityText": "ERROR", "body": {"stringValue": "boom"}},
                                  {"timeUnixNano": str(now_ns + 1), "severityText": "INFO", "body": {"stringValue": "ok"}},
                              ]}]}]}
    assert client.post("/v1/logs", json=logs).status_code == 200
    client.get("/api/incidents")
    client.get("/api/incidents/INC-Z")
    client.get("/no/such/path")
    metrics.scored("zscore", 0.02)
    metrics.step_done(pd.Timestamp("2024-05-01T11:10:00Z"), pd.Timestamp("2024-05-01T11:12:30Z"))
    response = client.get("/metrics")
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    samples = [sample for family in families.values() for sample in family.samples]
    value = lambda name, **labels: next(  # noqa: E731
        s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
    assert value("melt_received_logs_total") == 2
    assert value("melt_received_spans_total") == 0
    assert value("melt_requests_total", path="/v1/logs", code="200") == 1  # counted once, by the receiver
    assert value("melt_requests_total", path="/api/incidents", code="200") == 1
    assert value("melt_requests_total", path="/api/incidents/{incident_id}", code="404") == 1
    assert value("melt_requests_total", path="unmatched", code="404") == 1
    assert value("melt_incidents_open") == 1
    assert value("melt_pending_bytes") == 0
    assert value("melt_event_lag_seconds") == 150
    assert value("melt_step_lag_seconds") == 150 - 30 - 60  # due, not scored: newest - lateness - next step's end
    wall_lag = time.time() - pd.Timestamp("2024-05-01T11:10:00Z").timestamp()
    assert abs(value("melt_position_age_seconds") - wall_lag) < 60
    metrics.step_done(pd.Timestamp("2024-05-01T11:12:00Z"), None)
    assert client.get("/metrics").text.count("melt_step_lag_seconds 0.0") == 1  # keeping up
    assert value("melt_score_seconds_count", detector="zscore") == 1
    assert families["melt_score_seconds"].type == "histogram"
    assert {"melt_rejected_rows", "melt_position_timestamp_seconds"} <= set(families)


def test_the_page_and_its_script(server) -> None:
    client, *_ = server
    index = client.get("/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert "INC-A" in index.text and "INC-B" in index.text
    assert 'src="/static/plotly.min.js"' in index.text and 'href="/incidents/INC-A"' in index.text
    page = client.get("/incidents/INC-A")
    assert page.status_code == 200 and "INC-A" in page.text and 'href="/"' in page.text
    assert one_line_error(client.get("/incidents/INC-Z"), 404) == "unknown incident 'INC-Z'"
    script = client.get("/static/plotly.min.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("application/javascript")
    assert len(script.content) > 1_000_000 and b"plotly" in script.content[:2000].lower()


def test_errors_are_json_and_openapi_is_served(server) -> None:
    client, *_ = server
    assert one_line_error(client.get("/nowhere"), 404) == "Not Found"
    assert one_line_error(client.delete("/api/incidents"), 405) == "Method Not Allowed"
    assert client.get("/docs").status_code == 200
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {"/api/incidents", "/api/incidents/{incident_id}", "/api/incidents/{incident_id}/versions",
            "/api/incidents/{incident_id}/explain", "/api/detect", "/healthz", "/readyz", "/metrics",
            "/v1/traces", "/v1/logs", "/v1/metrics"} <= paths


def test_shutdown_stops_the_runner_then_closes_store_and_state(tmp_path, tiny_report) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "models.json").write_text(json.dumps({"detectors": ["zscore"]}))
    settings = default_settings().with_overrides({"serve.data_dir": str(tmp_path / "data")})
    state = StateDB(settings.serve.db)
    store = SegmentStore(settings.serve.data_dir, retention=settings.serve.retention,
                         commit_interval=pd.Timedelta("10ms"), max_pending_bytes=2**20)
    runner = FakeRunner(state, [])
    app = create_app(settings, models, runner=runner, store=store, state=state)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
    assert runner.calls == ["start", "stop"]
    with pytest.raises(RuntimeError, match="closed"):
        state.position()


def test_a_directory_without_models_is_refused(tmp_path) -> None:
    from melt.core.errors import BundleError

    settings = default_settings().with_overrides({"serve.data_dir": str(tmp_path / "data")})
    state = StateDB(tmp_path / "s.db")
    with pytest.raises(BundleError, match="not a model directory"):
        create_app(settings, tmp_path, runner=FakeRunner(state, []), store=object(), state=state)  # type: ignore[arg-type]
    state.close()
