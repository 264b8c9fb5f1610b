"""Root-cause ranking terms, the baselines and ``melt evaluate``'s figures."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import networkx as nx
import pandas as pd
import pytest
from click.testing import CliRunner

from melt.cli import cli
from melt.core.config import load_settings
from melt.evaluation.incidents import evaluate, rank_metrics, read_truth
from melt.incidents.ensemble import window_incident
from rca.baselines import baseline_rankings
from rca.rank import propagation_path, rank_root_causes
from rca.terms import evidence_kind, propagation_term

T0 = pd.Timestamp("2026-01-01 00:10", tz="UTC")
SIGNAL_OF = {"zscore": "metrics", "log_patterns": "logs", "change_events": "events"}


def _rows(*items: tuple) -> pd.DataFrame:
    return pd.DataFrame([{"timestamp": T0 + pd.Timedelta(minutes=m), "service": s, "detector": d, "entity": e,
                          "score": v, "raw_score": v, "evidence": {"anomaly_type": "spike", "expected_range": [0, 1]}}
                         for m, s, d, e, v in items])


@pytest.fixture
def graph() -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_edges_from([("gateway", "orders"), ("orders", "payments"), ("orders", "stock")])
    return g


def test_resource_saturation_beats_louder_symptoms_upstream(graph) -> None:
    """The caller's latency is louder, but latency is a symptom; the callee's own CPU is the cause."""
    scores = _rows((0, "payments", "zscore", "CpuUsageRate(%)", 12.0), (1, "orders", "zscore", "LatencyP99(s)", 30.0),
                   (1, "gateway", "zscore", "LatencyP99(s)", 25.0), (0, "stock", "zscore", "CpuUsageRate(%)", 1.0))
    incident = window_incident(scores, SIGNAL_OF, T0, T0 + pd.Timedelta(minutes=5), 4.0)
    ranked = rank_root_causes(incident, scores, graph, SIGNAL_OF, load_settings(None).rca, 4.0)
    assert ranked[0].service == "payments"
    assert ranked[0].path == ["gateway", "orders", "payments"]
    assert ranked[0].terms["evidence.resource"] > 0 and ranked[1].terms["evidence.resource"] == 0
    assert evidence_kind(scores, SIGNAL_OF, re.compile("cpu", re.IGNORECASE)).tolist() == ["resource", "symptoms", "symptoms", "resource"]


def test_a_busy_host_is_not_its_neighbours_own_cpu(graph) -> None:
    """A CPU hog raises node CPU for every service on its host; only its own pod CPU is its resource.

    Nezha case 26: the hog's pod CPU reads 180 sigma, a neighbour's node CPU 23; both saturate the
    evidence cap, and the neighbour's louder logs won until node metrics counted as symptoms.
    """
    scores = _rows((0, "payments", "zscore", "CpuUsageRate(%)", 180.0), (0, "stock", "zscore", "NodeCpuUsageRate(%)", 23.0),
                   (0, "stock", "log_patterns", "a -> b", 4.0))
    incident = window_incident(scores, SIGNAL_OF, T0, T0 + pd.Timedelta(minutes=5), 4.0)
    config = load_settings(None).rca
    assert evidence_kind(scores, SIGNAL_OF, config.resource_metrics, config.host_metrics).tolist() == [
        "resource", "symptoms", "logs"]
    ranked = rank_root_causes(incident, scores, graph, SIGNAL_OF, config, 4.0)
    assert ranked[0].service == "payments" and ranked[1].terms["evidence.resource"] == 0
    assert rank_root_causes(incident, scores, graph, SIGNAL_OF, replace(config, host_metrics=None), 4.0)[0].service == "stock"


def test_propagation_flows_from_callers_to_anomalous_callees(graph) -> None:
    own = pd.Series({"gateway": 1.0, "orders": 1.0, "payments": 1.0})
    walk = propagation_term(graph, own, 0.85)
    assert walk["payments"] == 1.0 and walk["payments"] > walk["orders"] > walk["gateway"]


def test_change_event_before_onset_breaks_a_tie(graph) -> None:
    scores = _rows((1, "orders", "log_patterns", "a -> b", 6.0), (1, "stock", "log_patterns", "c", 6.0),
                   (-2, "stock", "change_events", "deploy", 1.0))
    incident = window_incident(scores, SIGNAL_OF, T0, T0 + pd.Timedelta(minutes=5), 4.0)
    ranked = rank_root_causes(incident, scores, graph, SIGNAL_OF, load_settings(None).rca, 4.0)
    assert [c.service for c in ranked[:2]] == ["stock", "orders"]
    assert ranked[0].terms["change"] == 1.0


def test_candidates_limit_the_ranking_to_the_request_path(graph) -> None:
    scores = _rows((0, "batch-job", "zscore", "CpuUsageRate(%)", 50.0), (0, "orders", "log_patterns", "x", 5.0))
    incident = window_incident(scores, SIGNAL_OF, T0, T0 + pd.Timedelta(minutes=5), 4.0)
    ranked = rank_root_causes(incident, scores, graph, SIGNAL_OF, load_settings(None).rca, 4.0, {"orders", "gateway"})
    assert [c.service for c in ranked] == ["orders", "gateway"]  # batch-job is off the request path


def test_baselines(graph) -> None:
    scores = _rows((0, "orders", "zscore", "LatencyP99(s)", 9.0), (0, "payments", "zscore", "LatencyP99(s)", 3.0),
                   (0, "gateway", "zscore", "LatencyP99(s)", 5.0))
    out = baseline_rankings(scores, graph, None, seed=0, top_k=2)
    assert out["max_anomaly"] == ["orders", "gateway"]
    assert sorted(baseline_rankings(scores, graph, None, seed=0, top_k=5)["random"]) == ["gateway", "orders", "payments"]
    assert out["pagerank"][0] in {"orders", "payments"}
    assert propagation_path(graph, ["gateway"], "stock") == ["gateway", "orders", "stock"]


def _report(start: str, end: str, ranked: list[str], baseline: list[str]) -> dict:
    return {"window": {"start": start, "end": end}, "root_cause_analysis": {
        "ranked_causes": [{"service": s} for s in ranked], "baselines": {"max_anomaly": baseline}}}


def _truth(tmp_path) -> str:
    faults = [{"id": "f1", "type": "cpu", "root_cause_service": "a", "start": "2026-01-01T00:10:00Z", "end": "2026-01-01T00:20:00Z"},
              {"id": "f2", "type": "error", "root_cause_service": "b", "start": "2026-01-01T01:10:00Z", "end": "2026-01-01T01:20:00Z"},
              {"id": "f3", "type": "error", "root_cause_service": "c", "start": "2026-01-01T02:10:00Z", "end": "2026-01-01T02:20:00Z"}]
    file = tmp_path / "truth.json"
    file.write_text(json.dumps({"faults": faults}))
    return str(file)


def test_evaluate_detection_and_ranking(tmp_path) -> None:
    reports = [_report("2026-01-01T00:12:00Z", "2026-01-01T00:18:00Z", ["a", "x"], ["x", "a"]),
               _report("2026-01-01T01:09:00Z", "2026-01-01T01:15:00Z", ["x", "y", "b"], ["b"]),
               _report("2026-01-01T05:00:00Z", "2026-01-01T05:05:00Z", ["z"], ["z"])]
    result = evaluate(reports, read_truth(_truth(tmp_path)), tolerance=pd.Timedelta("2min"))
    detection = result["detection"]
    assert (detection["found"], detection["true_reports"], detection["missed"]) == (2, 2, ["f3"])
    assert detection["precision"] == pytest.approx(2 / 3) and detection["recall"] == pytest.approx(2 / 3)
    assert detection["time_to_detect_s"]["median"] == pytest.approx(30.0)  # +120 s and -60 s
    melt = result["ranking"]["melt"]
    assert (melt["AC@1"], melt["AC@3"]) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert melt["MRR"] == pytest.approx((1 + 1 / 3) / 3)
    assert result["ranking"]["max_anomaly"]["AC@1"] == pytest.approx(1 / 3)
    assert result["per_type"]["error"]["melt"]["cases"] == 2


def test_rank_metrics_avg5() -> None:
    assert rank_metrics(pd.Series([1, 2, None]))["Avg@5"] == pytest.approx((1 + 2 + 2 + 2 + 2) / 5 / 3)


def test_evaluate_cli(tmp_path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "INC-1.json").write_text(json.dumps(_report("2026-01-01T00:12:00Z", "2026-01-01T00:18:00Z", ["a"], ["a"])))
    (reports / "index.json").write_text("{}")
    runner = CliRunner()
    result = runner.invoke(cli, ["evaluate", "--reports", str(reports), "--truth", _truth(tmp_path),
                                 "--out", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    assert "faults found 1/3" in result.output and "AC@1" in result.output
    assert json.loads((tmp_path / "eval.json").read_text())["ranking"]["melt"]["AC@1"] == pytest.approx(1 / 3)
    missing = runner.invoke(cli, ["evaluate", "--reports", str(tmp_path / "nope"), "--truth", _truth(tmp_path)])
    assert missing.exit_code == 2 and "reports directory not found" in missing.output
    (reports / "bad.json").write_text("{not json")
    broken = runner.invoke(cli, ["evaluate", "--reports", str(reports), "--truth", _truth(tmp_path)])
    assert broken.exit_code == 2 and "not a JSON report" in broken.output
