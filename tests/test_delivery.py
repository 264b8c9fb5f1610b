"""Webhook delivery with a local receiver: retries, idempotency, payload templates, spool and `melt deliver`;
and `melt detect --explain openai` with a local OpenAI-compatible server, up and down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from melt.cli import cli
from melt.core.config import default_settings
from melt.core.errors import ConfigError
from melt.core.settings import WebhookSettings
from melt.delivery.spool import drain, spool_report
from melt.delivery.webhook import Webhook
from melt.reports.report import validate_report
from tests.local_servers import FakeLLM, WebhookReceiver

MODELS = "zscore,span_latency"
SECRET = "sk-test-never-write-me-8d1e"


@pytest.fixture(scope="module")
def reports(tiny_dir, tmp_path_factory) -> list[dict]:
    """Real reports from the tiny bundle (template explanations)."""
    out = tmp_path_factory.mktemp("reports")
    result = CliRunner().invoke(cli, ["detect", "--data", str(tiny_dir), "--models", MODELS, "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    files = sorted(p for p in out.glob("INC-*.json"))
    assert files
    return [json.loads(p.read_text()) for p in files]


def _hook_config(url: str | None, **changes) -> WebhookSettings:
    values = {"url": url, "backoff": 0.0, **changes}
    return default_settings().with_overrides({f"report.webhook.{k}": v for k, v in values.items()}).report.webhook


def test_retries_until_the_receiver_recovers_with_one_idempotency_key(reports) -> None:
    with WebhookReceiver(fail_first=2) as receiver:
        attempt = Webhook(_hook_config(receiver.url, max_retries=3)).send(reports[0])
    assert attempt.ok and attempt.tries == 3
    keys = {r["headers"]["idempotency-key"] for r in receiver.requests}
    assert keys == {reports[0]["fingerprint"]} and len(receiver.tickets) == 1
    assert receiver.requests[-1]["body"]["report"]["incident_id"] == reports[0]["incident_id"]


def test_a_final_4xx_is_not_retried(reports) -> None:
    with WebhookReceiver(fail_first=5, status=400) as receiver:
        attempt = Webhook(_hook_config(receiver.url, max_retries=3)).send(reports[0])
    assert not attempt.ok and attempt.status == 400 and len(receiver.requests) == 1


def test_jira_and_pagerduty_payloads(reports) -> None:
    report = reports[0]
    with WebhookReceiver() as receiver:
        Webhook(_hook_config(receiver.url, payload="jira", vars={"jira_project": "OPS"})).send(report)
        Webhook(_hook_config(receiver.url, payload="pagerduty",
                             vars={"pagerduty_routing_key": "${env:PD_KEY}"}), environ={"PD_KEY": "R0UT1NG"}).send(report)
    jira, pagerduty = (r["body"] for r in receiver.requests)
    assert jira["fields"]["project"] == {"key": "OPS"} and report["service"] in jira["fields"]["summary"]
    assert f"melt-{report['fingerprint']}" in jira["fields"]["labels"]
    assert pagerduty["routing_key"] == "R0UT1NG" and pagerduty["dedup_key"] == report["fingerprint"]
    assert pagerduty["payload"]["severity"] in {"critical", "error", "warning", "info"}
    assert pagerduty["payload"]["custom_details"]["incident_id"] == report["incident_id"]


def test_payload_template_errors_are_config_errors(reports, tmp_path) -> None:
    with pytest.raises(ConfigError, match="jira_project"):
        Webhook(_hook_config("http://127.0.0.1:9", payload="jira")).payload(reports[0])
    with pytest.raises(ConfigError, match="neither"):
        Webhook(_hook_config("http://127.0.0.1:9", payload=str(tmp_path / "missing.json")))
    with pytest.raises(ConfigError, match="TOKEN"):
        Webhook(_hook_config("http://127.0.0.1:9", headers={"Authorization": "Bearer ${env:TOKEN}"}),
                environ={}).headers(reports[0])


def test_spool_drain_sends_each_report_once_and_keeps_failures(reports, tmp_path) -> None:
    spool = tmp_path / "spool"
    with WebhookReceiver() as receiver:
        for report in reports:
            spool_report(spool, report, receiver.url, "generic", "HTTP 503", 1)
        receiver.down = True
        failed = drain(spool, _hook_config(None, max_retries=0))
        assert len(failed.failed) == len(reports) and len(list(spool.glob("*.json"))) == len(reports)
        assert json.loads(next(spool.glob("*.json")).read_text())["attempts"] == 2
        receiver.down = False
        done = drain(spool, _hook_config(None, max_retries=0))
        again = drain(spool, _hook_config(None, max_retries=0))
    assert sorted(done.sent) == sorted(r["incident_id"] for r in reports) and not again.sent
    assert len(receiver.tickets) == len(reports) and not list(spool.iterdir())


def _config_file(tmp_path: Path, **sections) -> str:
    file = tmp_path / "melt.yaml"
    file.write_text(yaml.safe_dump(sections))
    return str(file)


def test_detect_with_the_webhook_down_spools_everything_then_deliver_sends_each_once(tiny_dir, tmp_path) -> None:
    runner = CliRunner()
    with WebhookReceiver() as receiver:
        receiver.down = True
        config = _config_file(tmp_path, report={"webhook": {"url": receiver.url, "max_retries": 1, "backoff": 0.01}})
        out, spool = tmp_path / "out", tmp_path / "spool"
        result = runner.invoke(cli, ["--config", config, "detect", "--data", str(tiny_dir), "--models", MODELS, "--out",
                                     str(out), "--sink", "files", "--sink", "webhook", "--spool", str(spool), "--quiet"])
        written = sorted(p.name for p in out.glob("INC-*.json"))
        assert result.exit_code == 2, result.output
        assert "not delivered" in result.output and "melt deliver" in result.output
        spooled = [json.loads(p.read_text()) for p in spool.glob("*.json")]
        assert sorted(f"{e['report']['incident_id']}.json" for e in spooled) == written
        assert all(e["url"] == receiver.url for e in spooled)
        down_requests = len(receiver.requests)
        assert down_requests == 2 * len(written)  # one try and one retry each

        result = runner.invoke(cli, ["--config", config, "deliver", "--spool", str(spool)])
        assert result.exit_code == 2 and "still undelivered" in result.output

        receiver.down = False
        before = len(receiver.requests)
        result = runner.invoke(cli, ["--config", config, "deliver", "--spool", str(spool)])
        assert result.exit_code == 0, result.output
        assert f"delivered {len(written)} report(s)" in result.output
        result = runner.invoke(cli, ["--config", config, "deliver", "--spool", str(spool)])
        assert "delivered 0 report(s)" in result.output
    delivered = receiver.requests[before:]
    assert len(delivered) == len(written) and len(receiver.tickets) == len(written)
    assert not list(spool.glob("*.json"))


def _llm_config(tmp_path: Path, url: str, cache: str) -> str:
    return _config_file(tmp_path, explain={"cache_dir": str(tmp_path / cache), "openai": {
        "base_url": url + "/v1", "model": "local-test", "api_key_env": "MELT_TEST_KEY", "timeout": 1.0,
        "max_retries": 0}})


def _answer_citing_real_evidence(request_body: dict) -> str:
    facts = json.loads(request_body["messages"][-1]["content"].removeprefix("FACTS:\n"))
    ids = [e["id"] for e in facts["evidence"]][:2]
    return json.dumps({"summary": f"{facts['top_causes'][0]['service']} is the likely cause ({ids[0]}).",
                       "suggested_causes": [{"cause": "see the cited evidence", "evidence_ids": ids}],
                       "recommendations": ["Check the top cause."]})


def test_detect_explain_openai_up_and_down(tiny_dir, tmp_path) -> None:
    runner = CliRunner()

    class Grounded(FakeLLM):
        def _answer(self, handler, record):
            self.steps = [("content", _answer_citing_real_evidence(record["body"]))]
            super()._answer(handler, record)

    with Grounded([("content", "{}")]) as server:
        config = _llm_config(tmp_path, server.url, "cache")
        up = tmp_path / "up"
        result = runner.invoke(cli, ["--config", config, "detect", "--data", str(tiny_dir), "--models", MODELS, "--out",
                                     str(up), "--explain", "openai", "--keep-prompts", "--quiet"],
                               env={"MELT_TEST_KEY": SECRET})
        assert result.exit_code == 0, result.output
    reports = [json.loads(p.read_text()) for p in up.glob("INC-*.json")]
    assert reports and len(server.requests) == len(reports)
    for report in reports:
        validate_report(report)
        assert report["explanation_source"] == "llm:local-test" and report["explanation_fallback"] is None
        assert report["explanation_cites"] and set(report["explanation_cites"]) <= {e["id"] for e in report["evidence"]}
        assert report["prompts"][0]["role"] == "system"

    down = tmp_path / "down"  # the server is gone; a fresh cache, or the first run's answers would be reused
    config = _llm_config(tmp_path, server.url, "cache-2")
    result = runner.invoke(cli, ["--config", config, "detect", "--data", str(tiny_dir), "--models", MODELS, "--out",
                                 str(down), "--explain", "openai"], env={"MELT_TEST_KEY": SECRET})
    assert result.exit_code == 0, result.output
    assert "warning: LLM explanation failed" in result.output
    reports = [json.loads(p.read_text()) for p in down.glob("INC-*.json")]
    assert reports and all(r["explanation_source"] == "template" for r in reports)
    assert all("cannot connect" in r["explanation_fallback"] for r in reports)
    texts = [result.output] + [p.read_text() for d in (up, down, tmp_path / "cache") for p in d.rglob("*") if p.is_file()]
    assert not any(SECRET in text for text in texts)


def test_every_report_validates_and_broken_ones_are_named(reports) -> None:
    from melt.core.errors import ReportError

    for report in reports:
        validate_report(report)
    missing = {k: v for k, v in reports[0].items() if k != "fingerprint"}
    with pytest.raises(ReportError, match="fingerprint"):
        validate_report(missing)
    ungrounded = json.loads(json.dumps(reports[0])) | {"explanation_cites": ["E999"]}
    with pytest.raises(ReportError, match="E999"):
        validate_report(ungrounded)


def test_webhook_sink_without_a_url_is_one_line_and_exit_2(tiny_dir, tmp_path) -> None:
    result = CliRunner().invoke(cli, ["detect", "--data", str(tiny_dir), "--models", MODELS, "--out",
                                      str(tmp_path / "o"), "--sink", "webhook", "--quiet"])
    assert result.exit_code == 2
    assert result.output.strip() == "melt: error: the webhook sink needs report.webhook.url"


def test_a_corrupt_spool_entry_is_set_aside_not_sent(reports, tmp_path) -> None:
    spool = tmp_path / "spool"
    good = spool_report(spool, reports[0], "http://127.0.0.1:9", "generic", "HTTP 503", 1)
    entry = json.loads(good.read_text())
    entry["report"].pop("evidence")
    (spool / "broken.json").write_text(json.dumps(entry))
    (spool / "garbage.json").write_text("{not json")
    with WebhookReceiver() as receiver:
        result = drain(spool, _hook_config(None, max_retries=0), url=receiver.url)
    assert result.sent == [reports[0]["incident_id"]] and sorted(result.unreadable) == ["broken.json", "garbage.json"]
    assert len(receiver.requests) == 1 and files_left(spool) == ["failed/broken.json", "failed/garbage.json"]


def files_left(spool: Path) -> list[str]:
    """Every file under the spool, relative to it."""
    return sorted(str(p.relative_to(spool)) for p in spool.rglob("*") if p.is_file())
