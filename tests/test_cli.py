"""The CLI through CliRunner and as a subprocess: outputs, and exit code 2 with one line on user errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

import melt
from melt.cli import cli
from tests.conftest import REPO, run_melt


def test_version_and_help() -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["--version"]).output.strip() == f"melt, version {melt.__version__}"
    result = run_melt("--help")
    assert result.returncode == 0
    for command in ("generate", "detect", "train", "plugins"):
        assert command in result.stdout


def test_generate_train_detect_with_saved_models(tmp_path) -> None:
    runner = CliRunner()
    data = tmp_path / "data"
    result = runner.invoke(cli, ["generate", "--out", str(data), "--services", "6", "--duration", "40m",
                                 "--faults", "1", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "faults=1" in result.output
    result = runner.invoke(cli, ["train", "--data", str(data), "--models", "zscore,span_latency", "--out",
                                 str(tmp_path / "models")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "models" / "models.json").read_text())["detectors"] == ["span_latency", "zscore"]
    result = runner.invoke(cli, ["detect", "--data", str(data), "--models", "zscore,span_latency", "--model",
                                 str(tmp_path / "models"), "--out", str(tmp_path / "reports"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "incident" in result.output.splitlines()[0]
    assert (tmp_path / "reports" / "index.json").exists()


def test_stdout_sink_writes_json_lines(tiny_dir, tiny_models, tmp_path) -> None:
    result = run_melt("detect", "--data", str(tiny_dir), "--model", str(tiny_models), "--out", str(tmp_path / "r"),
                      "--sink", "stdout", "--quiet")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines and all("incident_id" in r for r in lines)


def broken_bundles(tmp_path, tiny_dir):
    """(name, args) cases that a user can cause."""
    no_column = tmp_path / "no_column"
    no_column.mkdir()
    pd.read_parquet(tiny_dir / "traces.parquet").drop(columns="service_name").to_parquet(no_column / "traces.parquet")
    empty = tmp_path / "empty"
    empty.mkdir()
    pd.read_parquet(tiny_dir / "traces.parquet").iloc[:0].to_parquet(empty / "traces.parquet")
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("ensemble:\n  treshold: 3\n")
    out = str(tmp_path / "out")
    return [
        ("missing directory", ["detect", "--data", str(tmp_path / "nope"), "--out", out], "bundle directory not found"),
        ("missing column", ["detect", "--data", str(no_column), "--out", out], "column 'service_name' is required"),
        ("empty traces", ["detect", "--data", str(empty), "--out", out], "traces: the frame is empty"),
        ("unknown config key", ["--config", str(bad_config), "detect", "--data", str(tiny_dir), "--out", out],
         "unknown key 'ensemble.treshold'"),
        ("unknown model", ["detect", "--data", str(tiny_dir), "--models", "zscor", "--out", out], "did you mean 'zscore'"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_user_errors_exit_2_with_one_line_via_cli_runner(case, tmp_path, tiny_dir) -> None:
    _, args, message = broken_bundles(tmp_path, tiny_dir)[case]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert message in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


def test_user_errors_exit_2_with_one_line_as_subprocess(tmp_path, tiny_dir) -> None:
    for name, args, message in broken_bundles(tmp_path, tiny_dir):
        result = run_melt(*args, cwd=REPO)
        assert result.returncode == 2, name
        assert result.stderr.startswith("melt: error: ") and message in result.stderr, name
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, name
        assert result.stdout == "", name


def test_detect_fits_on_a_separate_training_bundle(tiny_dir, tmp_path) -> None:
    result = CliRunner().invoke(cli, ["detect", "--data", str(tiny_dir), "--train", str(tiny_dir), "--models",
                                      "zscore,span_latency", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "index.json").exists()
    both = CliRunner().invoke(cli, ["detect", "--data", str(tiny_dir), "--train", str(tiny_dir), "--model",
                                    str(tmp_path), "--out", str(tmp_path)])
    assert both.exit_code == 2 and "either --train or --model" in both.output


def test_detect_refits_every_period_when_asked(tiny_dir, tmp_path) -> None:
    result = CliRunner().invoke(cli, ["detect", "--data", str(tiny_dir), "--train", str(tiny_dir), "--models", "zscore",
                                      "--retrain-every", "10m", "--out", str(tmp_path / "rolled")])
    assert result.exit_code == 0, result.output
    assert "fitted on the 2h before" in result.output and (tmp_path / "rolled" / "index.json").exists()
    for args, message in [(["--retrain-every", "often"], "--retrain-every: "),
                          (["--retrain-every", "10m", "--model", str(tmp_path)], "cannot use the fixed models")]:
        bad = CliRunner().invoke(cli, ["detect", "--data", str(tiny_dir), "--out", str(tmp_path / "x"), *args])
        assert bad.exit_code == 2 and message in bad.output and bad.output.count("\n") == 1, bad.output


@pytest.mark.parametrize(("args", "message"), [
    (["--fault-types", "latency,bogus"], "unknown fault type 'bogus'"),
    (["--duration", "30m", "--faults", "5"], "do not fit after the warm-up"),
    (["--preset", "realistic", "--topology", "missing.yaml"], "topology file not found"),
])
def test_generate_rejects_bad_settings_with_one_line(args, message, tmp_path) -> None:
    result = CliRunner().invoke(cli, ["generate", "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and message in result.output
    assert result.output.count("\n") == 1


def test_generate_flags_reach_the_generator(tmp_path) -> None:
    out = tmp_path / "g"
    result = CliRunner().invoke(cli, ["generate", "--out", str(out), "--duration", "40m", "--services", "6",
                                      "--faults", "2", "--fault-types", "bad_deploy,memory_leak", "--fault-duration", "5m",
                                      "--requests-per-minute", "20", "--overlap"])
    assert result.exit_code == 0, result.output
    truth = json.loads((out / "truth.json").read_text())
    assert [f["type"] for f in truth["faults"]] == ["bad_deploy", "memory_leak"]
