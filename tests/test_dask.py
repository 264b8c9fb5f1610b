"""`melt detect --dask` / `melt train --dask` on a LocalCluster: the same reports, bounded workers, clear errors."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from melt.cli import cli
from melt.core.bundle import MeltBundle
from melt.core.config import default_settings
from melt.evaluation.same_reports import compare_runs
from melt.pipeline.batch import detect

# every kind of part: per service (metrics; logs that read traces; events), per trace shard (teg reads
# logs), and whole (call_edges declares no partition)
MODELS = "zscore,log_templates,change_events,span_latency,teg,call_edges"


@pytest.fixture(scope="module")
def parted(tiny_bundle: MeltBundle, tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_bundle.write(tmp_path_factory.mktemp("parted") / "bundle", partitioned=True))


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """A LocalCluster of 2 one-thread workers that the module's runs share, reached by its address
    (``--dask tcp://...``), as a user points melt at a cluster that is already running."""
    import logging

    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster:
        yield cluster.scheduler_address


@pytest.mark.parametrize("layout", ["single", "partitioned"])
def test_same_reports_on_a_local_cluster(layout, tiny_dir, parted, scheduler, tmp_path) -> None:
    """The reports with and without Dask, on the same bundle (the row order of a partitioned
    bundle, in time, differs from a single file's, and so do the models fitted on it)."""
    data = tiny_dir if layout == "single" else parted
    plain = detect(data, MODELS, tmp_path / "plain", default_settings(), quiet=True, sinks=["files", "html"])
    assert plain.reports, "the tiny bundle has a fault: the comparison must cover at least one report"
    got = detect(data, MODELS, tmp_path / "dask", default_settings(), quiet=True, dask=scheduler,
                 sinks=["files", "html"])
    assert compare_runs(tmp_path / "plain", tmp_path / "dask") == []
    for report in got.reports:  # the workers draw each page's curves, lines and spans from the rows
        page = (tmp_path / "dask" / "html" / f"{report['incident_id']}.html").read_text()
        assert "plotly" in page and report["incident_id"] in page
        same_page(page, (tmp_path / "plain" / "html" / f"{report['incident_id']}.html").read_text())
    assert got.detectors == plain.detectors
    kinds = {task["part"].split(":")[0] for task in got.dask_tasks}
    assert {"fit", "fit-round-0", "fit-round-calibrate", "service", "trace", "whole"} <= kinds  # zscore by parts


def test_too_little_training_data_is_the_same_note_with_and_without_dask(tiny_bundle, tiny_dir, scheduler,
                                                                          tmp_path) -> None:
    """A detector fitted by parts counts its rows as the first round reads them: one with fewer
    than ``detect.min_train_rows`` is left out with the note a run without Dask gives."""
    from melt.pipeline.fitting import training_split

    train = training_split(tiny_bundle, default_settings().detect.train_fraction)
    metrics, logs = train.rows("metrics"), train.rows("logs")
    assert metrics != logs
    settings = default_settings().with_overrides({"detect.min_train_rows": min(metrics, logs) + 1})
    runs = [detect(tiny_dir, "zscore,log_templates", tmp_path / name, settings, quiet=True, **extra)
            for name, extra in (("plain", {}), ("dask", {"dask": scheduler}))]
    left_out = [sorted(str(note) for note in run.skipped) for run in runs]
    assert left_out[0] == left_out[1] and len(left_out[0]) == 1 and "too little training data" in left_out[0][0]
    assert runs[0].detectors == runs[1].detectors and len(runs[0].detectors) == 1
    assert compare_runs(tmp_path / "plain", tmp_path / "dask") == []


NUMBER = r"-?\d+\.\d+"


def same_page(a: str, b: str) -> None:
    """Two incident pages alike: the same text, and numbers that differ at most in their last
    printed digit (scores equal within 1e-6 can round either way at 4 digits)."""
    import re

    assert re.split(NUMBER, a) == re.split(NUMBER, b)
    np.testing.assert_allclose(np.array(re.findall(NUMBER, a), float), np.array(re.findall(NUMBER, b), float),
                               rtol=0, atol=1.5e-4)


def test_train_on_workers_gives_the_same_models(tiny_dir, tmp_path) -> None:
    runner = CliRunner()
    for name, extra in (("plain", []), ("dask", ["--dask", "local:2"])):
        result = runner.invoke(cli, ["train", "--data", str(tiny_dir), "--models", "zscore,log_templates",
                                     "--out", str(tmp_path / f"m-{name}"), *extra])
        assert result.exit_code == 0, result.output
        result = runner.invoke(cli, ["detect", "--data", str(tiny_dir), "--model", str(tmp_path / f"m-{name}"),
                                     "--models", "zscore,log_templates", "--out", str(tmp_path / f"r-{name}"), "--quiet",
                                     *extra])
        assert result.exit_code == 0, result.output
    assert compare_runs(tmp_path / "r-plain", tmp_path / "r-dask") == []
    for name in ("zscore", "log_templates"):
        a = json.loads((tmp_path / "m-plain" / name / "calibration.json").read_text())
        b = json.loads((tmp_path / "m-dask" / name / "calibration.json").read_text())
        np.testing.assert_allclose(a["anchors"], b["anchors"], rtol=0, atol=1e-9)


def _big_logs(root, services: int = 20, lines: int = 250_000) -> int:
    """A logs-only bundle of ~4 KB lines over 6 h (each with one long payload token, cheap to
    parse; few long lines rather than many short ones, as the memory is what counts here),
    written as hive partitions, and a reference bundle of one line in 100 of it; the bundle's
    size in memory, in bytes."""
    rng = np.random.default_rng(0)
    words = np.array(["request", "served", "cache", "miss", "retry", "upstream", "payload", "accepted"])
    filler = "payload=" + "a1b2c3d4" * 470
    chosen = rng.integers(0, len(words), size=(lines, 2))
    messages = pd.Series(words[chosen[:, 0]]).str.cat(pd.Series(words[chosen[:, 1]]), sep=" ") \
        .str.cat(pd.Series(rng.integers(0, 10_000, lines)).astype(str), sep=" id=").str.cat([filler] * lines, sep=" ")
    frame = pd.DataFrame({
        "timestamp": pd.Timestamp("2026-01-05", tz="UTC") + pd.to_timedelta(np.sort(rng.integers(0, 6 * 3600, lines)), unit="s"),
        "service": np.array([f"svc-{i:02d}" for i in range(services)], dtype=object)[rng.integers(0, services, lines)],
        "level": "INFO", "message": messages.to_numpy(dtype=object)})
    del messages, chosen
    size = int(frame.memory_usage(deep=True).sum())
    MeltBundle(logs=frame).write(root / "big", partitioned=True)
    MeltBundle(logs=frame.iloc[::100].reset_index(drop=True)).write(root / "reference")
    return size


def test_a_bundle_larger_than_a_worker_completes(tmp_path) -> None:
    """A worker limited below the bundle's size in memory (~1 GB of log lines) still finishes it:
    each task reads one service's partition. (A worker past 95% of its limit is restarted by its nanny, and a task
    that kills 4 workers fails the run.)"""
    size = _big_logs(tmp_path)
    limit = 800 * 2**20  # a worker holds ~300 MB of imports and model before it reads a part
    assert size > limit * 1.1, f"the bundle ({size / 2**20:.0f} MiB) must be larger than a worker's limit"
    result = detect(tmp_path / "big", "log_templates", tmp_path / "out", default_settings(), quiet=True,
                    train_dir=tmp_path / "reference", dask=f"local:1:{limit}")
    assert result.detectors == ["log_templates"]
    assert len([t for t in result.dask_tasks if t["part"].startswith("service:")]) == 20


@pytest.mark.parametrize(("spec", "expected"), [
    ("local:0", "want local:N with N >= 1"),
    ("local:two", "want local:N with N >= 1"),
    ("local:1:lots", "'lots' is not a memory size"),
    ("nonsense", "want a scheduler address"),
])
def test_bad_dask_spec_is_one_line(tiny_dir, tmp_path, spec, expected) -> None:
    result = CliRunner().invoke(cli, ["detect", "--data", str(tiny_dir), "--models", "zscore", "--out",
                                      str(tmp_path / "r"), "--dask", spec])
    assert result.exit_code == 2
    assert expected in result.output and "Traceback" not in result.output


def test_unreachable_scheduler_is_one_line(tiny_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("melt.pipeline.dask_run.CONNECT_TIMEOUT", "1s")  # the default 10 s, shortened
    result = CliRunner().invoke(cli, ["detect", "--data", str(tiny_dir), "--models", "zscore", "--out",
                                      str(tmp_path / "r"), "--dask", "tcp://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "cannot reach the scheduler" in result.output


def test_rolling_refits_are_refused_before_any_work(tiny_dir, tmp_path) -> None:
    result = CliRunner().invoke(cli, ["detect", "--data", str(tiny_dir), "--models", "zscore", "--out",
                                      str(tmp_path / "r"), "--dask", "local:1", "--retrain-every", "10m"])
    assert result.exit_code == 2
    assert "does not run rolling refits" in result.output
