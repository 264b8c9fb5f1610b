"""Rolling-origin backtest of the report forecasts (melt.reports.forecast) on NAB and on synthetic series.

Usage:
  python benchmarks/forecast_backtest.py ../shared/data/nab-dev [--origins 12] [--seeds 1,2] [--no-synth]

For each series, ``--origins`` forecast origins are spread evenly from the first time with a full
``report.forecast_history`` (default settings) of history, or 15% into the series if that comes
later, to the last time a whole horizon follows. At each origin the forecast is made exactly as a
report makes it: the rows before the origin, at most ``report.forecast_history`` of them, and the
path to ``report.forecast_horizon`` (30 min) past the origin: 30 steps of 1-minute data, 6 steps of
NAB's 5-minute series (in each series' own median step). The actual value of a path step is the
series' row within half a step of it.

Measured per origin: whether each actual lies in the 80% and 95% intervals (coverage, pooled
over all forecast steps), and MASE (Hyndman and Koehler, 2006): the mean absolute error over the
horizon divided by the in-sample mean absolute one-step seasonal-naive error (season = 1 day in
steps with at least one day of history, else the one-step naive). The same for the seasonal-naive
forecast itself (the value one season before each target, the last value with less than one
season of history). MASE per group: the mean over origins.

NAB: every CSV under DATA_DIR/data/<category>/ (the category is the folder). Synthetic: melt's
generator (``synth``) with 4 services, 3 days at 1-minute intervals, 20 requests per minute and
two faults, per seed; every metric series of every instance.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from melt.core.config import load_settings
from melt.core.settings import SynthSettings
from melt.reports.forecast import SEASON, forecast


def seasonal_naive(history: np.ndarray, steps: np.ndarray, period: int | None) -> np.ndarray:
    """The seasonal-naive forecast ``steps`` (1-based) ahead of ``history``'s end."""
    if period is None or len(history) < period:
        return np.full(len(steps), history[-1])
    back = period * np.ceil(steps / period).astype(int)
    return history[len(history) - 1 + steps - back]


def backtest_series(times: pd.DatetimeIndex, values: np.ndarray, origins: int, horizon: pd.Timedelta,
                    history: pd.Timedelta) -> list[dict]:
    """One record per origin: coverage counts and the MASE of the forecast and of the seasonal naive."""
    series = pd.Series(values, index=times).dropna().sort_index()
    series = series[~series.index.duplicated()]
    if len(series) < 50:
        return []
    step = pd.Timedelta(np.median(np.diff(series.index.as_unit("ns").asi8)), unit="ns")
    first = max(series.index[0] + history, series.index[int(0.15 * len(series))])
    last = series.index[-1] - horizon
    candidates = series.index[(series.index >= first) & (series.index <= last)]
    if len(candidates) == 0:
        return []
    picks = candidates[np.unique(np.linspace(0, len(candidates) - 1, origins).round().astype(int))]
    records = []
    for origin in picks:
        began = time.perf_counter()
        block = forecast(series.index, series.to_numpy(), origin, horizon, history)
        seconds = time.perf_counter() - began
        if block is None:
            continue
        path = pd.DataFrame(block["path"])
        path["timestamp"] = pd.to_datetime(path["timestamp"], utc=True, format="ISO8601").dt.as_unit("ns")
        actual = pd.merge_asof(path[["timestamp"]], series.rename("actual").rename_axis("timestamp").reset_index().assign(timestamp=lambda f: f["timestamp"].dt.as_unit("ns")),
                               on="timestamp", direction="nearest", tolerance=step / 2)["actual"].to_numpy()
        seen = np.isfinite(actual)
        if not seen.any():
            continue
        past = series[(series.index >= origin - history) & (series.index < origin)].to_numpy()
        period = round(SEASON / step)
        period = period if len(past) > period else None
        lag = period or 1
        scale = np.mean(np.abs(past[lag:] - past[:-lag]))
        if not scale > 0:
            continue
        steps = np.arange(1, len(path) + 1)
        naive = seasonal_naive(past, steps, period)
        mean = path["mean"].to_numpy()
        records.append({
            "n": int(seen.sum()),
            "in80": int(((path["lower_80"] <= actual) & (actual <= path["upper_80"]))[seen].sum()),
            "in95": int(((path["lower_95"] <= actual) & (actual <= path["upper_95"]))[seen].sum()),
            "mase": float(np.mean(np.abs(actual - mean)[seen]) / scale),
            "mase_snaive": float(np.mean(np.abs(actual - naive)[seen]) / scale),
            "model": block["model"], "seconds": seconds,
        })
    return records


def nab_series(data_dir: Path) -> list[tuple[str, str, pd.DatetimeIndex, np.ndarray]]:
    out = []
    for path in sorted((data_dir / "data").glob("*/*.csv")):
        frame = pd.read_csv(path)
        out.append((path.parent.name, path.stem, pd.DatetimeIndex(pd.to_datetime(frame["timestamp"], utc=True)),
                    frame["value"].to_numpy(float)))
    return out


def synth_series(seeds: list[int]) -> list[tuple[str, str, pd.DatetimeIndex, np.ndarray]]:
    from synth.generate import generate

    out = []
    for seed in seeds:
        metrics = generate(SynthSettings.of(seed=seed, services=4, duration="3d", requests_per_minute=20.0,
                                            faults=2)).metrics
        keys = ["service", "instance", "metric"] + (["peer"] if "peer" in metrics.columns else [])
        for key, rows in metrics.groupby(keys, observed=True, dropna=False):
            name = "/".join(str(k) for k in key if isinstance(k, str))
            out.append((f"synthetic/{rows['metric'].iloc[0]}", f"{seed}:{name}",
                        pd.DatetimeIndex(rows["timestamp"]), rows["value"].to_numpy(float)))
    return out


def summarise(records: pd.DataFrame, by: str) -> pd.DataFrame:
    groups = records.groupby(by)
    table = pd.DataFrame({
        "series": groups["series"].nunique(), "origins": groups.size(),
        "cover80": groups["in80"].sum() / groups["n"].sum(), "cover95": groups["in95"].sum() / groups["n"].sum(),
        "mase": groups["mase"].mean(), "mase_snaive": groups["mase_snaive"].mean(),
        "ms_per_fit": groups["seconds"].mean() * 1000,
    })
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="the nab-dev folder (holding data/<category>/*.csv)")
    parser.add_argument("--origins", type=int, default=12)
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--no-synth", action="store_true")
    args = parser.parse_args(argv)
    if not (args.data_dir / "data").is_dir():
        print(f"{args.data_dir}: no data/ folder (expected NAB's layout)", file=sys.stderr)
        return 2
    report = load_settings(env={}).report
    horizon, history = report.forecast_horizon, report.forecast_history
    began = time.perf_counter()
    sources = [("nab", s) for s in nab_series(args.data_dir)]
    if not args.no_synth:
        sources += [("synthetic", s) for s in synth_series([int(s) for s in args.seeds.split(",")])]
    rows = []
    for dataset, (category, name, times, values) in sources:
        for record in backtest_series(times, values, args.origins, horizon, history):
            rows.append({"dataset": dataset, "category": category, "series": name, **record})
    records = pd.DataFrame(rows)
    pd.set_option("display.width", 160)
    print(f"horizon {horizon}, history {history}, {args.origins} origins per series")
    for dataset, part in records.groupby("dataset"):
        table = pd.concat([summarise(part, "category"), summarise(part.assign(category="overall"), "category")])
        print(f"\n{dataset}\n" + table.round(3).to_string())
        print("models used: " + ", ".join(f"{k} {v}" for k, v in part["model"].value_counts().items()))
    table = summarise(records.assign(category="all"), "category")
    print("\nall\n" + table.round(3).to_string())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nwall {time.perf_counter() - began:.1f} s, peak RSS {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
