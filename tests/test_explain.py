"""Explanations: the openai provider against a local OpenAI-compatible server, fallback, cache, facts budget."""

from __future__ import annotations

import json

import pytest

from explain.answer import AnswerError, parse_answer
from explain.explainer import Explainer
from explain.facts import build_facts, estimate_tokens
from melt.core.config import default_settings
from melt.core.settings import ExplainSettings
from tests.local_servers import FakeLLM

SECRET = "sk-test-4f9a1c0ffee"


def _evidence(count: int) -> list[dict]:
    return [{"id": f"E{i}", "service": "payments", "component": "metrics", "detector": "zscore",
             "feature": "cpu_usage", "anomaly_type": "spike", "value": 97.0 - i, "expected_range": [10, 40],
             "score": 50.0 - i, "timestamp": "2026-01-05T01:00:00+00:00"} for i in range(1, count + 1)]


def _facts(evidence_count: int = 3) -> dict:
    evidence = _evidence(evidence_count)
    candidates = [{"service": "payments", "score": 0.9, "path": ["web", "payments"], "evidence_ids": ["E1", "E2"]},
                  {"service": "web", "score": 0.3, "path": ["web"], "evidence_ids": []}]
    incident = {"id": "INC-1", "start": "2026-01-05T01:00:00+00:00", "end": "2026-01-05T01:10:00+00:00",
                "services": ["payments", "web"], "severity": "high", "confidence": 0.9, "peak_score": 20.0}
    return build_facts(incident, candidates, evidence)


GOOD = json.dumps({"summary": "payments saturated its CPU (E1), slowing web.",
                   "suggested_causes": [{"cause": "CPU saturation on payments", "evidence_ids": ["E1", "E2"]}],
                   "recommendations": ["Scale out payments."]})
UNGROUNDED = json.dumps({"summary": "The database failed (E999).",
                         "suggested_causes": [{"cause": "database outage", "evidence_ids": ["E999"]}],
                         "recommendations": []})


def _settings(**values: object) -> ExplainSettings:
    """The ``explain`` settings with dotted changes under ``explain.`` (``openai.timeout`` ...)."""
    return default_settings().with_overrides({f"explain.{k}": v for k, v in values.items()}).explain


def _explainer(server: FakeLLM, tmp_path, concurrency: int = 4, **openai: object) -> Explainer:
    options = {"base_url": server.url + "/v1", "model": "test-model", "timeout": 2.0, "max_retries": 0, **openai}
    settings = _settings(provider="openai", cache_dir=str(tmp_path / "cache"), concurrency=concurrency,
                         **{f"openai.{k}": v for k, v in options.items()})
    return Explainer(settings, environ={"OPENAI_API_KEY": SECRET})


def test_valid_answer_is_used_and_cites_only_real_evidence(tmp_path) -> None:
    with FakeLLM([("content", GOOD)]) as server:
        [explanation] = _explainer(server, tmp_path).explain_all([_facts()])
    assert explanation["source"] == "llm:test-model"
    assert explanation["text"].startswith("payments saturated")
    assert explanation["cites"] == ["E1", "E2"]
    assert explanation["suggested_causes"] == ["CPU saturation on payments [E1, E2]"]
    request = server.requests[0]
    assert request["body"]["response_format"]["type"] == "json_schema"
    assert request["headers"]["authorization"] == f"Bearer {SECRET}"
    assert "prompts" not in explanation


def test_invalid_json_gets_one_repair_turn_that_quotes_the_error(tmp_path) -> None:
    with FakeLLM([("content", "Sure! The cause is {payments"), ("content", GOOD)]) as server:
        [explanation] = _explainer(server, tmp_path).explain_all([_facts()])
    assert explanation["source"] == "llm:test-model"
    assert len(server.requests) == 2
    repair = server.requests[1]["body"]["messages"]
    assert repair[-2] == {"role": "assistant", "content": "Sure! The cause is {payments"}
    assert "not valid JSON" in repair[-1]["content"]


def test_ungrounded_answer_falls_back_to_the_template_with_the_reason(tmp_path) -> None:
    with FakeLLM([("content", UNGROUNDED)]) as server:
        explainer = _explainer(server, tmp_path)
        [explanation] = explainer.explain_all([_facts()])
    assert len(server.requests) == 2  # the answer, then one repair
    assert "E999" in server.requests[1]["body"]["messages"][-1]["content"]
    assert explanation["source"] == "template"
    assert "E999" in explanation["fallback"] and "llm:test-model failed" in explanation["fallback"]
    assert set(explanation["cites"]) <= {"E1", "E2", "E3"}
    assert explainer.stats.fallbacks and explainer.stats.llm == 0


@pytest.mark.parametrize("step, reason", [(("status", 500), "HTTP 500"), (("sleep", 1.5), "timed out")])
def test_server_errors_and_timeouts_fall_back_after_the_retries(tmp_path, step, reason) -> None:
    with FakeLLM([step]) as server:
        [explanation] = _explainer(server, tmp_path, max_retries=1, timeout=0.5).explain_all([_facts()])
    assert len(server.requests) == 2  # first try + one retry, by the openai client
    assert explanation["source"] == "template" and reason in explanation["fallback"]
    assert SECRET not in json.dumps(explanation)


def test_unreachable_server_falls_back(tmp_path) -> None:
    with FakeLLM([("content", GOOD)]) as server:
        url = server.url
    settings = _settings(provider="openai", cache=False, **{"openai.base_url": url + "/v1", "openai.timeout": 1.0,
                                                            "openai.max_retries": 0})
    [explanation] = Explainer(settings, environ={}).explain_all([_facts()])
    assert explanation["source"] == "template" and "cannot connect" in explanation["fallback"]


def test_json_mode_when_the_server_rejects_json_schema(tmp_path) -> None:
    with FakeLLM([("content", GOOD)], json_schema=False) as server:
        explainer = _explainer(server, tmp_path)
        first, second = explainer.explain_all([_facts(3), _facts(4)])
    assert first["source"] == second["source"] == "llm:test-model"
    formats = [r["body"]["response_format"]["type"] for r in server.requests]
    # each incident tries the schema at most once (both may start before the first refusal)
    assert 1 <= formats.count("json_schema") <= 2 and formats.count("json_object") == 2


def test_cache_by_facts_hash_means_a_rerun_does_not_ask_again(tmp_path) -> None:
    with FakeLLM([("content", GOOD)]) as server:
        first = _explainer(server, tmp_path).explain_all([_facts()])
        again = _explainer(server, tmp_path)
        second = again.explain_all([_facts()])
        third = again.explain_all([_facts(4)])  # other facts: asked
    assert first == second and len(server.requests) == 2 and again.stats.cached == 1
    assert third[0]["source"] == "llm:test-model"
    assert not any(SECRET in f.read_text() for f in (tmp_path / "cache").iterdir())


def test_concurrency_is_bounded(tmp_path) -> None:
    active, peak = [0], [0]

    class Counting(FakeLLM):
        def _answer(self, handler, record):
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            import time
            time.sleep(0.1)
            active[0] -= 1
            super()._answer(handler, record)

    with Counting([("content", GOOD)]) as server:
        explainer = _explainer(server, tmp_path, concurrency=2, max_retries=0)
        results = explainer.explain_all([_facts(n) for n in range(3, 9)])
    assert all(r["source"] == "llm:test-model" for r in results)
    assert 1 <= peak[0] <= 2


def test_keep_prompts_stores_the_messages_without_the_key(tmp_path) -> None:
    with FakeLLM([("content", GOOD)]) as server:
        config = _explainer(server, tmp_path).settings
        [explanation] = Explainer(config, keep_prompts=True, environ={"OPENAI_API_KEY": SECRET}).explain_all([_facts()])
    roles = [m["role"] for m in explanation["prompts"]]
    assert roles == ["system", "user"] and "E1" in explanation["prompts"][1]["content"]
    assert SECRET not in json.dumps(explanation)


def test_parse_answer_rejects_schema_breaks_and_unknown_ids() -> None:
    with pytest.raises(AnswerError, match="schema"):
        parse_answer(json.dumps({"summary": "x"}), {"E1"})
    with pytest.raises(AnswerError, match="E7"):
        parse_answer(GOOD.replace("(E1)", "(E7)"), {"E1", "E2"})
    assert parse_answer("```json\n" + GOOD + "\n```", {"E1", "E2"})["summary"]


def test_facts_stay_within_the_token_budget_keeping_the_top_cause_evidence() -> None:
    facts = _facts()
    small = build_facts(facts["incident"], [{"service": "payments", "score": 0.9, "path": ["payments"],
                                             "evidence_ids": ["E30"]}], _evidence(40), max_tokens=300)
    assert estimate_tokens(small) <= 300 or len(small["evidence"]) == 1
    assert small["evidence"][0]["id"] == "E30"
    assert len(small["evidence"]) < 40


@pytest.mark.parametrize(("reason", "words", "advice"), [
    ("errors", "payments returns errors in traces", "Read the stack traces of payments"),
    ("timing", "payments responds slowly in traces", "Profile payments's own processing"),
    ("structure", "payments's calls changed shape", "Compare payments's logs"),
    ("logs", "payments writes unusual log lines", "Read the stack traces of payments"),
])
def test_a_trace_reads_by_the_reason_its_detector_gives(reason, words, advice) -> None:
    from explain.template import TemplateExplainer

    trace = {"id": "E1", "service": "payments", "component": "traces", "detector": "logtraceguard",
             "feature": "payments POST /charge", "anomaly_type": "trace_anomaly", "value": 65.522379,
             "expected_range": [None, None], "score": 12.4, "timestamp": "2026-01-05T01:00:00+00:00",
             "reason": reason, "rarity_nats": {"timing": 2.5, "errors": 65.5}}
    candidates = [{"service": "payments", "score": 0.9, "path": ["payments"], "evidence_ids": ["E1"]}]
    incident = {"id": "INC-1", "start": "2026-01-05T01:00:00+00:00", "end": "2026-01-05T01:10:00+00:00",
                "services": ["payments"], "severity": "high", "confidence": 0.9, "peak_score": 12.4}
    facts = build_facts(incident, candidates, [trace])
    assert facts["evidence"][0]["reason"] == reason
    explanation = TemplateExplainer().explain(facts)
    assert explanation["suggested_causes"][0].startswith(words)
    assert explanation["suggested_causes"][0].endswith("trace score 65.52) [E1]")
    assert any(line.startswith(advice) for line in explanation["recommendations"])
