"""Partitioned bundles: a frame may be hive partitions by date and service, read back as the same data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from melt.cli import cli
from melt.core.bundle import MeltBundle
from melt.core.errors import BundleError


def _sorted(frame: pd.DataFrame, time: str) -> pd.DataFrame:
    return frame.sort_values([time, *[c for c in frame.columns if c != time]], ignore_index=True)


def test_a_partitioned_bundle_reads_back_the_same_frames(tiny_bundle: MeltBundle, tmp_path: Path) -> None:
    root = tiny_bundle.write(tmp_path / "parts", partitioned=True)
    services = sorted(tiny_bundle.logs["service"].unique())
    days = sorted({d.name for d in (root / "logs.parquet").iterdir()})
    assert days == [f"date={tiny_bundle.logs['timestamp'].min():%Y-%m-%d}"]
    assert sorted(p.name for p in (root / "logs.parquet" / days[0]).iterdir()) == [f"service={s}" for s in services]
    again = MeltBundle.read(root)
    assert again.signals() == tiny_bundle.signals() and again.truth == tiny_bundle.truth
    for name in tiny_bundle.signals():
        time = "start_time" if name == "traces" else "timestamp"
        before, after = tiny_bundle.frame(name), again.frame(name)
        assert list(after.columns) == list(before.columns) and after.dtypes.equals(before.dtypes)
        assert after[time].is_monotonic_increasing
        pd.testing.assert_frame_equal(_sorted(after, time), _sorted(before, time))


def test_an_empty_frame_stays_present_and_empty(tiny_bundle: MeltBundle, tmp_path: Path) -> None:
    bundle = MeltBundle(logs=tiny_bundle.logs, events=tiny_bundle.events.iloc[0:0])
    again = MeltBundle.read(bundle.write(tmp_path / "p", partitioned=True))
    assert again.signals() == ["logs", "events"] and again.rows("events") == 0
    assert list(again.events.columns) == list(bundle.events.columns)


def test_writing_one_layout_over_the_other_replaces_it(tiny_bundle: MeltBundle, tmp_path: Path) -> None:
    root = tmp_path / "b"
    tiny_bundle.write(root)
    tiny_bundle.write(root, partitioned=True)
    assert (root / "logs.parquet").is_dir()
    tiny_bundle.write(root)
    assert (root / "logs.parquet").is_file()
    assert len(MeltBundle.read(root).logs) == len(tiny_bundle.logs)


def test_detect_gives_the_same_reports_from_either_layout(tiny_bundle: MeltBundle, tmp_path: Path) -> None:
    reports = {}
    for partitioned in (False, True):
        data = tiny_bundle.write(tmp_path / f"data{int(partitioned)}", partitioned=partitioned)
        out = tmp_path / f"out{int(partitioned)}"
        result = CliRunner().invoke(cli, ["detect", "--data", str(data), "--models", "zscore,log_templates,span_latency",
                                          "--out", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        reports[partitioned] = {f.name: _without_clock(json.loads(f.read_text())) for f in sorted(out.glob("INC-*.json"))}
    assert reports[False] and reports[False] == reports[True]


def _without_clock(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("generated_at", "created_at")}


def test_generate_writes_a_partitioned_bundle(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    result = CliRunner().invoke(cli, ["generate", "--out", str(out), "--duration", "20m", "--services", "5",
                                      "--faults", "1", "--seed", "3", "--partitioned"])
    assert result.exit_code == 0, result.output
    assert (out / "traces.parquet").is_dir() and MeltBundle.read(out).rows("traces") > 0


def test_a_corrupt_partition_is_one_clear_error(tiny_bundle: MeltBundle, tmp_path: Path) -> None:
    root = tiny_bundle.write(tmp_path / "parts", partitioned=True)
    next((root / "logs.parquet").rglob("*.parquet")).write_bytes(b"not parquet")
    with pytest.raises(BundleError, match="cannot read the partitioned parquet dataset"):
        MeltBundle.read(root)


def test_pagerank_baseline_does_not_depend_on_the_process() -> None:
    """Tied services used to swap between processes: a set's order follows the string hashing that
    each Python process seeds anew (``PYTHONHASHSEED``), and the power iteration's last bits with it."""
    import os
    import subprocess
    import sys

    code = ("import networkx as nx, pandas as pd; from rca.baselines import pagerank_ranking; "
            "edges = [('gw', 'a'), ('gw', 'b'), ('gw', 'c'), ('a', 'db'), ('b', 'db'), ('c', 'db')]; "
            "print(pagerank_ranking(nx.DiGraph(edges), pd.Series({'a': 2.0, 'b': 2.0, 'c': 2.0, 'db': 1.0, 'gw': 0.5})))")
    rankings = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(4)}
    assert len(rankings) == 1, rankings  # every process the same
    ranking = eval(rankings.pop())  # noqa: S307 - our own printed list
    assert [n for n in ranking if n in "abc"] == ["a", "b", "c"]  # tied services by name


def test_an_import_writes_the_same_frames_partitioned(tiny_bundle: MeltBundle, tmp_path: Path) -> None:
    source = tmp_path / "logs.csv"
    tiny_bundle.logs.head(3000).to_csv(source, index=False)
    frames = {}
    for flag in ([], ["--partitioned"]):
        out = tmp_path / f"imported{len(flag)}"
        for _ in range(2):  # the second run replaces the first (--force)
            result = CliRunner().invoke(cli, ["import", "csv", str(source), "--signal", "logs", "--out", str(out),
                                              "--force", "--quiet", *flag])
            assert result.exit_code == 0, result.output
        assert (out / "logs.parquet").is_dir() == bool(flag)
        frames[bool(flag)] = MeltBundle.read(out).logs
    flat, parts = frames[False], frames[True]
    assert list(parts.columns) == list(flat.columns) and len(parts) == len(flat) == 3000
    pd.testing.assert_frame_equal(_sorted(parts, "timestamp"), _sorted(flat, "timestamp"))
