"""The bad-input corpus: what a new user feeds melt, and the promise for each.

Every case either exits 2 with one line and no traceback, or takes its documented fallback with
nothing computed lost. The importer cases live in ``test_import_bad_input.py`` and the delivery
cases in ``test_delivery_bad_input.py``; this file holds the CLI, the config file, the environment,
the bundle, the plugins, ``melt generate`` and the LLM's answers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from melt.cli import cli
from tests.conftest import MELT, REPO
from tests.local_servers import _Server

MODELS = "zscore,span_latency"


def one_line_error(result: Any, exit_code: int = 2) -> str:
    """The promise for an error a user caused: this exit code, one line, no traceback."""
    output = result.output
    assert result.exit_code == exit_code, output
    assert output.count("\n") == 1 and output.startswith("melt: error: "), output
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return output


def config_file(tmp_path: Path, content: str | bytes, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else textwrap.dedent(content).encode())
    return str(path)


# ---------------------------------------------------------------- the config file and the environment
CONFIG_CASES = [
    ("ensemble:\n  treshold: 3\n", "unknown key 'ensemble.treshold' (did you mean 'ensemble.threshold'?)"),
    ("ensembel: {}\n", "unknown key 'ensembel'"),
    ("- 1\n- 2\n", "the top level must be a mapping"),
    ("ensemble: {threshold: 3\n", "not valid YAML"),
    ("ensemble:\n  threshold: .nan\n", "'ensemble.threshold' must be a finite number"),
    ("ensemble:\n  threshold: .inf\n", "'ensemble.threshold' must be a finite number"),
    ("ensemble:\n  threshold: 0\n", "'ensemble.threshold' must be > 0"),
    ("ensemble:\n  weights: {zscore: heavy}\n", "'ensemble.weights.zscore' must be a number"),
    ("ensemble:\n  weights: {zscore: -1}\n", "'ensemble.weights.zscore' must be >= 0"),
    ("ensemble:\n  min_alerts: 0\n", "'ensemble.min_alerts' must be >= 1"),
    ("ensemble:\n  merge_gap: soon\n", "'ensemble.merge_gap': 'soon' is not a duration"),
    ("ensemble:\n  settled_fraction: 2\n", "'ensemble.settled_fraction' must be <= 1"),
    ("ensemble:\n  combiner: median\n", "'ensemble.combiner' must be one of max, mean, weighted"),
    ("rca:\n  pagerank_alpha: 1.7\n", "'rca.pagerank_alpha' must be < 1"),
    ("rca:\n  top_k: -1\n", "'rca.top_k' must be >= 1"),
    ("rca:\n  resource_metrics: 'cpu(['\n", "'rca.resource_metrics' is not a valid regex"),
    ("rca:\n  host_metrics: '*node'\n", "'rca.host_metrics' is not a valid regex"),
    ("rca:\n  evidence_weights: {logs: -0.5}\n", "'rca.evidence_weights.logs' must be >= 0"),
    ("rca:\n  lookback: 0m\n", "'rca.lookback': '0m' must be positive"),
    ("rca:\n  complaint_discount: 1.5\n", "'rca.complaint_discount' must be <= 1"),
    ("detect:\n  train_fraction: 1.5\n", "'detect.train_fraction' must be <= 1"),
    ("detect:\n  train_fraction: 0\n", "'detect.train_fraction' must be > 0"),
    ("detect:\n  min_train_rows: 0\n", "'detect.min_train_rows' must be >= 1"),
    ("detect:\n  retrain_every: often\n", "'detect.retrain_every': 'often' is not a duration"),
    ("detectors:\n  zscroe:\n    min_points: 3\n", "'detectors.zscroe' names no installed detector (did you mean"),
    ("detectors:\n  zscore: [1, 2]\n", "'detectors.zscore' must be a mapping of parameters"),
    ("detectors:\n  zscore:\n    min_points: -5\n", "'detectors.zscore.min_points' must be >= 1"),
    ("detectors:\n  zscore:\n    adapt: 1x\n", "'detectors.zscore.adapt': '1x' is not a duration"),
    ("detectors:\n  zscore:\n    expected_sigma: 2\n", "unknown key 'detectors.zscore.expected_sigma'"),
    ("detectors:\n  iforest:\n    n_estimators: 0\n", "'detectors.iforest.n_estimators' must be >= 1"),
    ("detectors:\n  lstm_ae:\n    device: tpu\n", "'detectors.lstm_ae.device' must be one of auto, cpu, cuda"),
    ("detectors:\n  lstm_ae:\n    validation_fraction: 1.5\n", "'detectors.lstm_ae.validation_fraction' must be in [0, 1]"),
    ("detectors:\n  log_templates:\n    masks: [['(unclosed', '<X>']]\n", "'detectors.log_templates.masks' item 0"),
    ("detectors:\n  log_templates:\n    masks: 7\n", "'detectors.log_templates.masks' must be a list"),
    ("detectors:\n  gat_gae:\n    aggregation: median\n", "'detectors.gat_gae.aggregation' must be one of max, mean"),
    ("detectors:\n  zscore:\n    alert_z: .nan\n", "'detectors.zscore.alert_z' must be a finite number"),
    ("explain:\n  openai:\n    timeout: -1\n", "'explain.openai.timeout' must be > 0"),
    ("explain:\n  openai:\n    temperature: 9\n", "'explain.openai.temperature' must be <= 2"),
    ("explain:\n  concurrency: 0\n", "'explain.concurrency' must be >= 1"),
    ("explain:\n  deadline: never\n", "'explain.deadline': 'never' is not a duration"),
    ("explain:\n  provider: claude\n", "'explain.provider' must be one of template, openai"),
    ("report:\n  sinks: [files, fax]\n", "'report.sinks' has an unknown sink 'fax'"),
    ("report:\n  max_evidence: 0\n", "'report.max_evidence' must be >= 1"),
    ("report:\n  webhook:\n    backoff: -1\n", "'report.webhook.backoff' must be >= 0"),
    ("import:\n  nezha:\n    service_regex: '.+'\n", "'import.nezha.service_regex' needs a group"),
    ("import:\n  chunk_rows: 0\n", "'import.chunk_rows' must be >= 1"),
    ("synth:\n  services: 2.5\n", "'synth.services' must be an integer"),
    ("synth:\n  warmup_fraction: 1\n", "'synth.warmup_fraction' must be < 1"),
    ("synth:\n  start: yesterday\n", "'synth.start' is not a time"),
    ("log_level: LOUD\n", "'log_level' must be one of DEBUG, INFO, WARNING, ERROR"),
    (b"ensemble:\n  threshold: \xff\xfe 3\n", "not valid UTF-8"),
]


@pytest.mark.parametrize(("content", "message"), CONFIG_CASES, ids=[f"config-{i}" for i in range(len(CONFIG_CASES))])
def test_a_bad_config_value_is_one_line_naming_the_key(tmp_path, content, message) -> None:
    config = config_file(tmp_path, content)
    result = CliRunner().invoke(cli, ["--config", config, "detect", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert message in one_line_error(result)
    assert not (tmp_path / "o").exists()  # nothing started


ENV_CASES = [
    ({"MELT_THRESHOLD": "nan"}, "'ensemble.threshold' must be a finite number"),
    ({"MELT_THRESHOLD": "inf"}, "'ensemble.threshold' must be a finite number"),
    ({"MELT_THRESHOLD": "-1"}, "'ensemble.threshold' must be > 0"),
    ({"MELT_THRESHOLD": "lots"}, "MELT_THRESHOLD must be a number"),
    ({"MELT_LOG_LEVEL": "loud"}, "key 'log_level' must be one of"),
]


@pytest.mark.parametrize(("env", "message"), ENV_CASES, ids=[f"env-{i}" for i in range(len(ENV_CASES))])
def test_a_bad_environment_override_is_one_line(tmp_path, env, message) -> None:
    result = CliRunner().invoke(cli, ["detect", "--data", str(tmp_path), "--out", str(tmp_path / "o")], env=env)
    assert message in one_line_error(result)


# ---------------------------------------------------------------- the command line itself
USAGE_CASES = [
    (["detect", "--data", "x"], "Missing option '--out'"),
    (["detect", "--out", "o"], "Missing option '--data'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["generate", "--services", "many", "--out", "o"], "'many' is not a valid integer"),
    (["generate", "--preset", "brutal", "--out", "o"], "'brutal' is not one of"),
    (["detect", "--data", "d", "--out", "o", "--sink", "fax"], "'fax' is not one of"),
    (["evaluate", "--reports", "r"], "Missing option '--truth'"),
    (["traces", "train", "--data", "x"], "Missing option '--output'"),
    (["import", "fancy", "src", "--out", "o"], "'fancy' is not one of"),
    (["detect", "--data", "d", "--out", "o", "--explain", "gpt"], "'gpt' is not one of"),
]


@pytest.mark.parametrize(("args", "message"), USAGE_CASES, ids=[f"usage-{i}" for i in range(len(USAGE_CASES))])
def test_a_usage_error_is_one_line_like_every_other_error(args, message) -> None:
    assert message in one_line_error(CliRunner().invoke(cli, args))


def test_out_that_is_a_file_and_config_that_is_a_directory(tmp_path) -> None:
    file = tmp_path / "a-file"
    file.write_text("x")
    assert "is a file" in one_line_error(CliRunner().invoke(cli, ["generate", "--out", str(file)]))
    assert "is a directory" in one_line_error(CliRunner().invoke(cli, ["--config", str(tmp_path), "generate", "--out", "o"]))


# ---------------------------------------------------------------- the bundle
def _bundle_with(tmp_path: Path, tiny_bundle: Any, **frames: pd.DataFrame) -> str:
    root = tmp_path / "bundle"
    root.mkdir()
    for name, frame in frames.items():
        frame.to_parquet(root / f"{name}.parquet", index=False)
    return str(root)


def _metrics(tiny_bundle: Any) -> pd.DataFrame:
    return tiny_bundle.metrics.drop(columns=["label", "peer"], errors="ignore").head(500).copy()


BUNDLE_CASES = [
    ("no frame", lambda b: {}, "no frame found"),
    ("wrong columns", lambda b: {"metrics": _metrics(b).rename(columns={"value": "val"})}, "'value' is required but missing"),
    ("empty frame", lambda b: {"metrics": _metrics(b).iloc[:0]}, "the frame is empty"),
    ("all NaN", lambda b: {"metrics": _metrics(b).assign(value=float("nan"))}, "holds no number at all"),
    ("year 2256", lambda b: {"metrics": _metrics(b).assign(
        timestamp=_metrics(b)["timestamp"].where(_metrics(b).index != 3, pd.Timestamp("2256-01-01", tz="UTC")))},
     "has a time out of range"),
    ("empty service", lambda b: {"metrics": _metrics(b).assign(service=_metrics(b)["service"].where(
        _metrics(b).index != 5, " "))}, "column 'service' is empty"),
    ("null service", lambda b: {"metrics": _metrics(b).assign(service=_metrics(b)["service"].where(
        _metrics(b).index != 5, None))}, "column 'service' has a null value"),
    ("text values", lambda b: {"metrics": _metrics(b).assign(value="high")}, "cannot be read as float"),
    ("span without id", lambda b: {"traces": b.traces.head(50).drop(columns=["span_id"])}, "'span_id' is required"),
    ("negative span", lambda b: {"traces": b.traces.head(50).assign(duration=-1.0)}, "is negative"),
]


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in BUNDLE_CASES], ids=[c[0] for c in BUNDLE_CASES])
def test_a_broken_bundle_is_one_line_naming_the_frame(tmp_path, tiny_bundle, make, message) -> None:
    data = _bundle_with(tmp_path, tiny_bundle, **make(tiny_bundle))
    result = CliRunner().invoke(cli, ["detect", "--data", data, "--models", "all", "--out", str(tmp_path / "o")])
    assert message in one_line_error(result)


def test_a_corrupt_parquet_file_and_missing_paths(tmp_path) -> None:
    data = tmp_path / "bundle"
    data.mkdir()
    (data / "metrics.parquet").write_text("not parquet at all")
    runner = CliRunner()
    assert "cannot read parquet" in one_line_error(runner.invoke(cli, ["detect", "--data", str(data), "--out", "o"]))
    missing = str(tmp_path / "missing")
    assert "not found" in one_line_error(runner.invoke(cli, ["detect", "--data", missing, "--out", "o"]))
    assert "not found" in one_line_error(runner.invoke(cli, ["train", "--data", missing, "--out", "m"]))
    (tmp_path / "f").write_text("x")
    assert "not a bundle directory" in one_line_error(runner.invoke(cli, ["detect", "--data", str(tmp_path / "f"),
                                                                          "--out", "o"]))


DETECT_CASES = [
    (["--models", "zscroe"], "unknown detector 'zscroe' (did you mean 'zscore'?)"),
    (["--models", ","], "--models is empty"),
    (["--train", "t", "--model", "m"], "either --train or --model"),
    (["--retrain-every", "soon"], "--retrain-every: key 'detect.retrain_every': 'soon' is not a duration"),
    (["--retrain-every", "10m", "--model", "m"], "cannot use the fixed models of --model"),
    (["--model", "nowhere"], "nowhere: directory not found"),
    (["--train", "nowhere"], "nowhere: directory not found"),
]


@pytest.mark.parametrize(("args", "message"), DETECT_CASES, ids=[f"detect-{i}" for i in range(len(DETECT_CASES))])
def test_detect_flag_errors(tiny_dir, tmp_path, args, message) -> None:
    result = CliRunner().invoke(cli, ["detect", "--data", str(tiny_dir), "--out", str(tmp_path / "o"), *args])
    assert message in one_line_error(result)


def test_a_damaged_model_directory(tiny_dir, tmp_path) -> None:
    runner = CliRunner()
    models = tmp_path / "models"
    assert runner.invoke(cli, ["train", "--data", str(tiny_dir), "--models", "zscore", "--out", str(models)]).exit_code == 0
    detect = ["detect", "--data", str(tiny_dir), "--model", str(models), "--quiet", "--out", str(tmp_path / "o")]
    (models / "models.json").write_text("{not json")
    assert "not a melt model index" in one_line_error(runner.invoke(cli, detect))
    (models / "models.json").write_text(json.dumps({"detectors": ["zscore", "iforest"]}))
    assert "models/iforest: not a saved detector" in one_line_error(runner.invoke(cli, [*detect[:-2], "--models",
                                                                                        "iforest", *detect[-2:]]))
    (models / "models.json").write_text(json.dumps({"detectors": ["zscore"]}))
    (models / "zscore" / "state.joblib").write_bytes(b"\x00garbage")
    assert "cannot load the saved 'zscore' model" in one_line_error(runner.invoke(cli, detect))


def test_train_fraction_zero_names_the_key(tiny_dir, tmp_path) -> None:
    config = config_file(tmp_path, "detect:\n  train_fraction: 0\n")
    result = CliRunner().invoke(cli, ["--config", config, "detect", "--data", str(tiny_dir), "--out", str(tmp_path / "o")])
    assert "'detect.train_fraction' must be > 0" in one_line_error(result)


# ---------------------------------------------------------------- melt generate
GENERATE_CASES = [
    (["--duration", "10000d"], "more than the"),
    (["--interval", "1ms"], "more than the"),
    (["--services", "100000"], "--services must be at most 5000"),
    (["--services", "2"], "--services must be at least 4"),
    (["--fault-types", ","], "--fault-types names no fault type"),
    (["--fault-types", "latency,bogus"], "unknown fault type 'bogus'"),
    (["--requests-per-minute", "nan"], "'synth.requests_per_minute' must be a finite number"),
    (["--requests-per-minute", "0"], "'synth.requests_per_minute' must be > 0"),
    (["--interval", "2h", "--duration", "30m"], "--interval (2h) is longer than --duration (30min)"),
    (["--duration", "0m"], "'synth.duration': '0m' must be positive"),
    (["--fault-duration", "soon"], "'synth.fault_duration': 'soon' is not a duration"),
    (["--faults", "-1"], "'synth.faults' must be >= 0"),
    (["--seed", "-3"], "'synth.seed' must be >= 0"),
    (["--duration", "30m", "--faults", "5"], "do not fit after the warm-up"),
    (["--topology", "missing.yaml"], "topology file not found"),
]


@pytest.mark.parametrize(("args", "message"), GENERATE_CASES, ids=[f"generate-{i}" for i in range(len(GENERATE_CASES))])
def test_generate_refuses_what_it_cannot_do(tmp_path, args, message) -> None:
    result = CliRunner().invoke(cli, ["generate", "--out", str(tmp_path / "g"), *args])
    assert message in one_line_error(result)
    assert not (tmp_path / "g").exists()


def test_generate_output_places(tmp_path) -> None:
    runner = CliRunner()
    topology = tmp_path / "topology.yaml"
    topology.write_text(yaml.safe_dump([{"from": "a", "to": "b"}]))
    result = runner.invoke(cli, ["generate", "--out", str(tmp_path / "g"), "--topology", str(topology)])
    assert "needs a 'services' mapping and a 'calls' list" in one_line_error(result)
    (tmp_path / "file").write_text("x")
    result = runner.invoke(cli, ["generate", "--out", str(tmp_path / "file" / "under"), "--duration", "40m",
                                 "--services", "6", "--faults", "0"])
    assert "cannot write the bundle" in one_line_error(result)
    result = runner.invoke(cli, ["generate", "--out", str(tmp_path / ("x" * 300)), "--duration", "40m",
                                 "--services", "6", "--faults", "0"])
    assert "cannot write the bundle" in one_line_error(result)
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("a user's file")
    assert "is not empty" in one_line_error(runner.invoke(cli, ["generate", "--out", str(out)]))
    assert (out / "keep.txt").read_text() == "a user's file"


# ---------------------------------------------------------------- the LLM's answers
class RawLLM(_Server):
    """An OpenAI-compatible endpoint that answers every request with the same raw bytes."""

    def __init__(self, status: int, content_type: str, body: bytes, delay: float = 0.0) -> None:
        self.answer = (status, content_type, body, delay)
        super().__init__(self._reply)

    def _reply(self, handler: BaseHTTPRequestHandler, record: dict[str, Any]) -> None:
        status, content_type, body, delay = self.answer
        time.sleep(delay)
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


def _completion(message: Any) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop", "message": message}]}).encode()


LLM_CASES = [
    ("text/plain body", 200, "text/plain", b"Sure! The root cause is the database."),
    ("HTML labelled as JSON", 200, "application/json", b"<html><body>502 Bad Gateway</body></html>"),
    ("message null", 200, "application/json", _completion(None)),
    ("a JSON array", 200, "application/json", b"[1, 2, 3]"),
    ("no choices", 200, "application/json", json.dumps({"id": "x", "choices": []}).encode()),
    ("choices not a list", 200, "application/json", json.dumps({"id": "x", "choices": "many"}).encode()),
    ("content not JSON", 200, "application/json", _completion({"role": "assistant", "content": "the db is down"})),
    ("content off schema", 200, "application/json", _completion({"role": "assistant", "content": '{"summary": 3}'})),
    ("content cites nothing real", 200, "application/json", _completion({"role": "assistant", "content": json.dumps(
        {"summary": "E999 says so", "suggested_causes": [{"cause": "x", "evidence_ids": ["E999"]}],
         "recommendations": []})})),
    ("empty 200", 200, "application/json", b""),
    ("HTTP 500", 500, "application/json", b'{"error": {"message": "boom"}}'),
    ("HTTP 429", 429, "application/json", b'{"error": {"message": "slow down"}}'),
    ("HTTP 401", 401, "application/json", b'{"error": {"message": "bad key"}}'),
    ("truncated JSON", 200, "application/json", b'{"id": "x", "choices": [{"message": {"con'),
]


def _llm_settings(tmp_path: Path, url: str, **explain: Any) -> str:
    return config_file(tmp_path, yaml.safe_dump({"explain": {"cache": False, **explain, "openai": {
        "base_url": url + "/v1", "model": "m", "api_key_env": "MELT_TEST_KEY", "timeout": 5.0, "max_retries": 0}}}))


@pytest.mark.parametrize(("status", "content_type", "body"), [c[1:] for c in LLM_CASES], ids=[c[0] for c in LLM_CASES])
def test_an_llm_answer_of_any_shape_falls_back_to_the_template(tiny_dir, tmp_path, status, content_type, body) -> None:
    with RawLLM(status, content_type, body) as server:
        result = CliRunner().invoke(cli, ["--config", _llm_settings(tmp_path, server.url), "detect", "--data",
                                          str(tiny_dir), "--models", MODELS, "--out", str(tmp_path / "o"),
                                          "--explain", "openai", "--quiet"], env={"MELT_TEST_KEY": "k"})
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and result.output.count("melt: warning: LLM explanation failed") == 1
    reports = [json.loads(p.read_text()) for p in (tmp_path / "o").glob("INC-*.json")]
    assert reports and len(reports) == len(json.loads((tmp_path / "o" / "index.json").read_text())["incidents"])
    assert all(r["explanation_source"] == "template" and r["explanation_fallback"] for r in reports)


def test_an_unreachable_llm_falls_back(tiny_dir, tmp_path) -> None:
    with RawLLM(200, "application/json", b"{}") as server:
        url = server.url  # closed when the block ends: nothing listens there any more
    result = CliRunner().invoke(cli, ["--config", _llm_settings(tmp_path, url), "detect", "--data", str(tiny_dir),
                                      "--models", MODELS, "--out", str(tmp_path / "o"), "--explain", "openai", "--quiet"])
    assert result.exit_code == 0 and "cannot connect" in result.output
    assert list((tmp_path / "o").glob("INC-*.json"))


def test_a_hanging_llm_is_cut_off_by_the_run_deadline(tiny_dir, tmp_path) -> None:
    """Each request would wait its 5 s timeout; the run's 1 s deadline sends every report to the template."""
    with RawLLM(200, "application/json", _completion({"role": "assistant", "content": "{}"}), delay=3.0) as server:
        began = time.perf_counter()
        result = CliRunner().invoke(cli, ["--config", _llm_settings(tmp_path, server.url, deadline="1s", concurrency=1),
                                          "detect", "--data", str(tiny_dir), "--models", MODELS, "--out",
                                          str(tmp_path / "o"), "--explain", "openai"], env={"MELT_TEST_KEY": "k"})
        took = time.perf_counter() - began
    assert result.exit_code == 0, result.output
    assert "explaining" in result.output and "up to 1s" in result.output  # the one progress line
    reports = [json.loads(p.read_text()) for p in (tmp_path / "o").glob("INC-*.json")]
    assert reports and all(r["explanation_source"] == "template" for r in reports)
    assert any("deadline" in (r["explanation_fallback"] or "") for r in reports) or len(reports) == 1
    assert took < 3.0 * len(reports) + 20


# ---------------------------------------------------------------- plugins
BROKEN_PLUGINS = {
    "broken_plugins/__init__.py": "",
    "broken_plugins/imports.py": "raise ImportError('this plugin needs a library that is not installed')\n",
    "broken_plugins/fails.py": textwrap.dedent('''
        from melt import Detector, empty_scores

        class FitFails(Detector):
            name = "fit_fails"
            signal = "metrics"

            def fit(self, bundle):
                raise RuntimeError("fit exploded")

            def score(self, bundle):
                return empty_scores()

        class ScoreFails(Detector):
            name = "score_fails"
            signal = "metrics"

            def fit(self, bundle):
                return self

            def calibration_scores(self, bundle):
                import numpy as np
                return np.zeros(3)

            def score(self, bundle):
                raise ValueError("score exploded")
    '''),
    "broken_plugins-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: broken-plugins\nVersion: 0.1\n",
    "broken_plugins-0.1.dist-info/entry_points.txt": textwrap.dedent('''
        [melt.detectors]
        import_fails = broken_plugins.imports:Nope
        fit_fails = broken_plugins.fails:FitFails
        score_fails = broken_plugins.fails:ScoreFails
    '''),
}


@pytest.fixture(scope="module")
def broken_plugins(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("plugins")
    for name, text in BROKEN_PLUGINS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO)])}


def _melt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MELT, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_a_plugin_that_fails_to_import_is_a_warning_under_all_and_an_error_when_named(broken_plugins, tiny_dir,
                                                                                       tmp_path) -> None:
    metrics_only = tmp_path / "metrics-only"  # "all" then fits the metric detectors only: the warning is the point
    metrics_only.mkdir()
    shutil.copy(tiny_dir / "metrics.parquet", metrics_only / "metrics.parquet")
    run = _melt(broken_plugins, "detect", "--data", str(metrics_only), "--models", "all", "--out", str(tmp_path / "a"))
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert "[melt warning] skipped import_fails (failed to load from broken-plugins: ImportError" in run.stderr
    named = _melt(broken_plugins, "detect", "--data", str(tiny_dir), "--models", "import_fails", "--out", str(tmp_path / "b"))
    assert named.returncode == 2 and named.stderr.strip().count("\n") == 0
    assert "detector 'import_fails' failed to load: ImportError" in named.stderr


def test_a_plugin_that_raises_is_dropped_and_the_run_goes_on(broken_plugins, tiny_dir, tmp_path) -> None:
    out = tmp_path / "o"
    run = _melt(broken_plugins, "detect", "--data", str(tiny_dir), "--models", "zscore,fit_fails,score_fails",
                "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert "detector 'fit_fails' failed to fit and was left out (RuntimeError: fit exploded)" in run.stderr
    assert "detector 'score_fails' failed to score and was left out (ValueError: score exploded)" in run.stderr
    index = json.loads((out / "index.json").read_text())
    assert index["incidents"] and {"fit_fails", "score_fails"} <= {note["detector"] for note in index["left_out"]}
    alone = _melt(broken_plugins, "detect", "--data", str(tiny_dir), "--models", "fit_fails", "--out", str(tmp_path / "p"))
    error = [line for line in alone.stderr.splitlines() if not line.startswith("[melt")]
    assert alone.returncode == 2 and len(error) == 1 and error[0].startswith("melt: error:") and "fit exploded" in error[0]
