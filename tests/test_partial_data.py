"""Real collections lack signals: a detector without training data is skipped, the others go on,
an incident that names no service still gets a report, and every report ranks the services involved."""

from __future__ import annotations

import json

import networkx as nx
import pandas as pd
from click.testing import CliRunner

from melt.cli import cli
from melt.core.bundle import MeltBundle
from melt.core.config import default_settings, load_settings
from melt.incidents.ensemble import Incident, window_incident
from melt.pipeline.batch import detect, report_incidents
from rca.rank import rank_root_causes
from synth.generate import generate
from tests.conftest import small_config


def test_a_detector_without_training_data_is_skipped_and_the_others_go_on(tmp_path, tiny_bundle, capsys) -> None:
    """OnlineBoutique's fault minutes have no logs: log detectors cannot fit, metrics and traces still run."""
    train = MeltBundle(metrics=tiny_bundle.metrics, traces=tiny_bundle.traces, validate=False).write(tmp_path / "train")
    tiny_bundle.write(tmp_path / "data")
    result = detect(tmp_path / "data", "zscore,log_patterns,call_edges", tmp_path / "reports", default_settings(),
                    train_dir=train, quiet=False)
    assert result.detectors == ["zscore", "call_edges"]
    assert any(note.detector == "log_patterns" and "0 logs rows" in str(note) for note in result.skipped)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[melt warning]")]
    assert len(warnings) == 1 and "log_patterns" in warnings[0]
    cli_run = CliRunner().invoke(cli, ["train", "--data", str(train), "--models", "zscore,log_templates",
                                       "--out", str(tmp_path / "models")])
    assert cli_run.exit_code == 0, cli_run.output
    assert json.loads((tmp_path / "models" / "models.json").read_text())["detectors"] == ["zscore"]
    nothing = CliRunner().invoke(cli, ["train", "--data", str(train), "--models", "log_templates",
                                       "--out", str(tmp_path / "none")])
    assert nothing.exit_code == 2 and "needs logs but the bundle has no logs.parquet" in nothing.output


def test_an_incident_that_names_no_service_still_gets_a_report(tiny_bundle) -> None:
    start = pd.Timestamp(tiny_bundle.truth["faults"][0]["start"])
    empty = Incident(id="INC-EMPTY", start=start, end=start + pd.Timedelta("2min"), services=[], severity="low",
                     confidence=0.05, peak_score=0.0, alerts=pd.DataFrame(), evidence=pd.DataFrame())
    scores = pd.DataFrame(columns=["timestamp", "service", "detector", "entity", "score", "evidence", "raw_score"])
    scores["timestamp"] = pd.to_datetime(scores["timestamp"], utc=True)
    report = report_incidents([empty], scores, MeltBundle(metrics=tiny_bundle.metrics, validate=False),
                              {"zscore": "metrics"}, load_settings(None))[0]
    assert report["service"] == "unknown" and report["root_cause_analysis"]["ranked_causes"] == []
    assert "no root cause could be ranked" in report["explanation"]


def test_every_involved_service_is_ranked_up_to_top_k() -> None:
    """One service with evidence above its noise floor still gives a list of five: AC@3 and AC@5 mean something."""
    bundle = generate(small_config(seed=3, services=9))
    fault = bundle.truth["faults"][0]
    t0 = pd.Timestamp(fault["start"]).floor("min")
    services = sorted(bundle.traces["service_name"].unique())
    scores = pd.DataFrame({"timestamp": t0, "service": services, "detector": "zscore", "entity": "cpu_usage",
                           "score": [12.0] + [1.0] * (len(services) - 1), "evidence": [{"anomaly_type": "spike"}] * len(services)})
    signal_of = {"zscore": "metrics"}
    incident = window_incident(scores, signal_of, t0, t0 + pd.Timedelta("3min"), 4.0)
    ranked = rank_root_causes(incident, scores, nx.DiGraph(), signal_of, load_settings(None).rca, 4.0, set(services))
    assert len(ranked) == 5 and ranked[0].service == services[0]
    assert [c.score for c in ranked[1:]] == [0.0] * 4
