"""End to end on a generated bundle: incidents, reports, and the injected root cause ranked first."""

from __future__ import annotations

import json

from click.testing import CliRunner

from melt.cli import cli
from melt.core.config import default_settings
from melt.pipeline.batch import detect
from synth.generate import generate
from tests.conftest import small_config

REPORT_FIELDS = {"timestamp", "service", "component", "feature", "anomaly_details", "root_cause_analysis",
                 "explanation", "incident_id", "fingerprint", "window", "evidence", "explanation_source"}


def test_pipeline_finds_the_injected_fault_and_ranks_its_service_first(tmp_path) -> None:
    bundle = generate(small_config(seed=5, faults=2, duration="80m", fault_types=["latency", "error_burst"]))
    bundle.write(tmp_path / "data")
    result = detect(tmp_path / "data", "all", tmp_path / "reports", default_settings(), quiet=True)
    assert result.reports, "no incident found"
    truth = bundle.truth["faults"]
    hits = 0
    for fault in truth:
        for report in result.reports:
            overlaps = report["window"]["start"] < fault["end"] and report["window"]["end"] > fault["start"]
            if overlaps and report["service"] == fault["root_cause_service"]:
                hits += 1
                break
    assert hits >= 1, [(r["window"], r["service"]) for r in result.reports]


def test_report_shape(tmp_path, tiny_dir, tiny_models) -> None:
    result = CliRunner().invoke(cli, ["detect", "--data", str(tiny_dir), "--model", str(tiny_models), "--out",
                                      str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "index.json").read_text())["incidents"]
    assert index
    report = json.loads((tmp_path / index[0]["file"]).read_text())
    assert REPORT_FIELDS <= set(report)
    details = report["anomaly_details"]
    assert {"value", "expected_range", "anomaly_type", "severity", "confidence"} <= set(details)
    rca = report["root_cause_analysis"]
    assert rca["ranked_causes"][0]["rank"] == 1 and rca["ranked_causes"][0]["service"] == report["service"]
    assert all({"service", "metric", "correlation_score"} <= set(c) for c in rca["correlated_anomalies"])
    assert rca["suggested_causes"] and report["explanation_source"] == "template"
    ids = {e["id"] for e in report["evidence"]}
    assert all(i in ids for c in rca["ranked_causes"] for i in c["evidence_ids"])
    assert report["component"] in {"metrics", "logs", "traces", "events"}
