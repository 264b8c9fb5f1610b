"""The metric detectors on the Numenta Anomaly Benchmark (NAB v1.1, 41 series), with NAB's standard-profile score.

Usage: python benchmarks/metrics_nab.py DATA_DIR [--detectors zscore,iforest,lstm_ae,changepoint]
                                                 [--config config.yaml] [--threshold T] [--series SUBSTRING]

DATA_DIR is the nab-dev folder (``data/<category>/*.csv`` and ``labels/combined_windows.json``).
Each series becomes a metrics bundle (one service per series, one metric). Every detector is built
from the config's ``detectors.<name>`` section, fitted on NAB's probationary rows (the first
``min(15%, 750)``) and scores the rest. The fusion is the ensemble's (``ensemble.combiner`` and
``ensemble.weights`` of the config, one window per row). An alert is a calibrated score at or over
the threshold (default: the config's ``ensemble.threshold``). Alerts on a series are episodes (runs
of consecutive alert rows); an episode's first row is its detection, the one an engineer is paged
for. Per category and detector: windows found, false-alarm episodes (episodes whose start lies
outside every window), false alarms per series per day of scored data, and NAB's normalised
standard score of those detections (:mod:`melt.evaluation.nab`). NAB also picks each detector's
best threshold for the whole corpus; that score is printed as a reference (``best threshold``),
never used as the default.

Published detectors count every alert row as a detection; melt's episodes count once. The
published scores on these 41 series are in ../shared/data/README.md.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from melt.core.bundle import MeltBundle
from melt.core.config import load_settings
from melt.core.registry import build_detector
from melt.evaluation.nab import normalised, probation_rows, score_series
from melt.incidents.ensemble import fuse

PUBLISHED = {"ARTime": 76.7, "contextOSE": 69.3, "Numenta HTM": 68.9, "HTM Java": 65.4, "Numenta TM": 62.8,
             "earthgecko Skyline": 58.2, "KNN-CAD": 57.1, "Relative Entropy": 56.3, "Twitter ADVec": 50.1,
             "Random Cut Forest": 49.7, "Windowed Gaussian": 42.6, "Bayesian changepoint": 10.1}
SWEEP = np.round(np.arange(2.0, 16.01, 0.5), 2)


@dataclass
class Series:
    """One NAB file: its values, labelled windows as row indices, and the scores of each detector."""

    name: str
    category: str
    frame: pd.DataFrame
    windows: list[tuple[int, int]]
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def probation(self) -> int:
        return probation_rows(len(self.frame))

    @property
    def scored_days(self) -> float:
        times = self.frame["timestamp"]
        return (times.iloc[-1] - times.iloc[self.probation]) / pd.Timedelta("1D")


def read_series(root: Path, only: str | None = None) -> list[Series]:
    """Every series under ``root/data`` with its windows from ``root/labels/combined_windows.json``."""
    labels = json.loads((root / "labels" / "combined_windows.json").read_text())
    files = sorted((root / "data").glob("*/*.csv"))
    if not files:
        sys.exit(f"no NAB series under {root / 'data'} (expected data/<category>/*.csv)")
    out = []
    for path in files:
        key = f"{path.parent.name}/{path.name}"
        if only and only not in key:
            continue
        frame = pd.read_csv(path)
        times = pd.to_datetime(frame["timestamp"]).to_numpy()
        frame["timestamp"] = pd.to_datetime(frame["timestamp"]).dt.tz_localize("UTC")
        windows = []
        for start, end in labels.get(key, []):
            left = int(np.searchsorted(times, pd.Timestamp(start).to_datetime64(), side="left"))
            right = int(np.searchsorted(times, pd.Timestamp(end).to_datetime64(), side="right")) - 1
            windows.append((left, right))
        out.append(Series(path.stem, path.parent.name, frame, windows))
    return out


def to_bundle(series: Series, rows: slice) -> MeltBundle:
    part = series.frame.iloc[rows]
    return MeltBundle(metrics=pd.DataFrame({"timestamp": part["timestamp"].to_numpy(), "service": series.name,
                                            "metric": "value", "value": part["value"].to_numpy(dtype=float)}))


def episode_starts(alert: np.ndarray) -> np.ndarray:
    """Row indices where a run of consecutive alert rows begins."""
    alert = np.asarray(alert, bool)
    return np.flatnonzero(alert & ~np.concatenate([[False], alert[:-1]]))


def score_detectors(series: Series, names: list[str], settings, seconds: dict[str, float]) -> None:
    """Fill ``series.scores`` with each detector's calibrated score per row (0 in probation)."""
    train, test = to_bundle(series, slice(0, series.probation)), to_bundle(series, slice(series.probation, None))
    times = series.frame["timestamp"]
    for name in names:
        began = time.perf_counter()
        detector = build_detector(name, settings.detector_params(name)).fit_calibrated(train)
        scores = detector.detect(test)
        per_row = scores.groupby("timestamp")["score"].max().reindex(times).fillna(0.0).to_numpy().copy()
        per_row[: series.probation] = 0.0
        series.scores[name] = per_row
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - began


def fused(series: Series, names: list[str], settings) -> np.ndarray:
    """The ensemble's fused score per row, each row its own window."""
    times = series.frame["timestamp"]
    frames = [pd.DataFrame({"timestamp": times, "service": series.name, "detector": name, "score": series.scores[name]})
              for name in names]
    step = times.diff().median()
    out, _ = fuse(pd.concat(frames, ignore_index=True), dict.fromkeys(names, "metrics"), step,
                  settings.ensemble.combiner, settings.ensemble.weights)
    return out.set_index("window")["fused"].reindex(times.dt.floor(step)).fillna(0.0).to_numpy()


def evaluate(corpus: list[Series], scores_of, threshold: float) -> dict[str, dict[str, float]]:
    """Per category and overall: windows, found, false-alarm episodes, days, raw NAB score."""
    table: dict[str, dict[str, float]] = {}
    for series in corpus:
        starts = episode_starts(scores_of(series) >= threshold)
        starts = starts[starts >= series.probation]
        result = score_series(starts, series.windows, len(series.frame))
        for key in (series.category, "all"):
            row = table.setdefault(key, {"series": 0, "windows": 0, "found": 0, "false_alarms": 0, "days": 0.0, "raw": 0.0})
            row["series"] += 1
            row["windows"] += result.windows
            row["found"] += result.tp
            row["false_alarms"] += result.fp
            row["days"] += series.scored_days
            row["raw"] += result.raw
    return table


def best_threshold(corpus: list[Series], scores_of) -> tuple[float, float]:
    """NAB's own choice: the one threshold over the corpus with the highest raw score, and that score."""
    best = max(SWEEP, key=lambda t: evaluate(corpus, scores_of, t)["all"]["raw"])
    row = evaluate(corpus, scores_of, best)["all"]
    return float(best), normalised(row["raw"], row["windows"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--detectors", default="zscore,iforest,lstm_ae,changepoint")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--series", default=None, help="only series whose category/file contains this")
    parser.add_argument("--scores", type=Path, default=None,
                        help="pickle of per-row scores: detectors it holds are read from it, not scored again "
                             "(to fuse with other weights or thresholds), and new ones are added to it")
    args = parser.parse_args()
    settings = load_settings(args.config)
    threshold = args.threshold if args.threshold is not None else settings.ensemble.threshold
    names = args.detectors.split(",")
    corpus = read_series(args.data, args.series)
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    saved = pickle.loads(args.scores.read_bytes()) if args.scores is not None and args.scores.is_file() else {}
    for i, series in enumerate(corpus, 1):
        series.scores.update({n: saved[series.name][n] for n in names if n in saved.get(series.name, {})})
        score_detectors(series, [n for n in names if n not in series.scores], settings, seconds)
        print(f"[{i}/{len(corpus)}] {series.category}/{series.name}", file=sys.stderr, flush=True)
    if args.scores is not None:
        args.scores.write_bytes(pickle.dumps({s.name: {**saved.get(s.name, {}), **s.scores} for s in corpus}))
    rows = [(name, lambda s, n=name: s.scores[n]) for name in names]
    if len(names) > 1:
        fusions = {s.name: fused(s, names, settings) for s in corpus}  # once, not once per swept threshold
        rows.append(("fusion", lambda s: fusions[s.name]))
    windows = sum(len(s.windows) for s in corpus)
    days = sum(s.scored_days for s in corpus)
    print(f"NAB: {len(corpus)} series, {windows} windows, {days:,.0f} scored days; threshold {threshold:g}; "
          f"fusion = {settings.ensemble.combiner} of {', '.join(names)} with weights {dict(settings.ensemble.weights)}\n")
    print("| detector | category | windows found | false-alarm episodes | per series per day | NAB standard |")
    print("|---|---|---|---|---|---|")
    summary = []
    for label, scores_of in rows:
        table = evaluate(corpus, scores_of, threshold)
        for key in sorted(k for k in table if k != "all") + ["all"]:
            row = table[key]
            print(f"| {label} | {key} | {row['found']}/{row['windows']} | {row['false_alarms']} | "
                  f"{row['false_alarms'] / row['days']:.3f} | {normalised(row['raw'], row['windows']):.1f} |")
        best, best_score = best_threshold(corpus, scores_of)
        summary.append((label, table["all"], best, best_score))
    print("\n| detector | windows found | false alarms per series per day | NAB standard at the threshold | "
          "best threshold (NAB's choice) | NAB standard there |")
    print("|---|---|---|---|---|---|")
    for label, row, best, best_score in summary:
        print(f"| {label} | {row['found']}/{row['windows']} | {row['false_alarms'] / row['days']:.3f} | "
              f"{normalised(row['raw'], row['windows']):.1f} | {best:g} | {best_score:.1f} |")
    print("\npublished (every alert row a detection): " + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items()))
    print("fit+score time: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()) +
          f"; rows {sum(len(s.frame) for s in corpus):,}; wall {time.perf_counter() - began:.1f} s; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
