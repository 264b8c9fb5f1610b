"""SKAB outlier-detection benchmark for the metric detectors, on the published leaderboard protocol.

Usage: python benchmarks/metrics_skab.py DATA_DIR [--detectors zscore,iforest,lstm_ae] [--threshold 3.0]
                                                  [--smooth 10] [--fuse iforest,lstm_ae]

DATA_DIR is the SKAB checkout (its ``data/`` holds valve1/, valve2/, other/). For each of the 34
files with anomalies: train on the first 400 rows, test on the rest; one alert per timestamp when
the calibrated score reaches ``--threshold`` (the same fixed value for every file and detector,
never tuned on test labels); point-wise F1 over all test points together, without point
adjustment; FAR (false alarm rate) and MAR (missed alarm rate) as SKAB defines them. ``--smooth``
sets ``smooth_window`` of the multivariate detectors (SKAB is sampled at 1 Hz, so 10 rows is 10 s).
The fusion row alerts on the mean of the ``--fuse`` detectors' calibrated scores. Published numbers are from SKAB's
leaderboard (see ../shared/data/README.md).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from melt.core.bundle import MeltBundle
from melt.core.registry import build_detector
from melt.evaluation.scoring import pointwise

PUBLISHED = {"Conv-AE": 0.78, "MSET": 0.78, "T2+Q (PCA)": 0.76, "LSTM-AE": 0.74, "T2": 0.66, "LSTM-VAE": 0.56,
             "Vanilla LSTM": 0.54, "Vanilla AE": 0.39, "MSCRED": 0.36, "Isolation Forest": 0.29}
TRAIN_ROWS = 400


def skab_files(root: Path) -> list[Path]:
    data = root / "data" if (root / "data").is_dir() else root
    files = sorted(p for sub in ("valve1", "valve2", "other") for p in (data / sub).glob("*.csv"))
    if not files:
        sys.exit(f"no SKAB files under {data} (expected valve1/, valve2/, other/)")
    return files


def to_bundle(frame: pd.DataFrame) -> MeltBundle:
    """One SKAB file -> a metrics bundle: service 'pump', one metric per sensor column."""
    sensors = frame.drop(columns=["anomaly", "changepoint"])
    long = sensors.melt(id_vars="datetime", var_name="metric", value_name="value")
    long = long.rename(columns={"datetime": "timestamp"}).assign(service="pump")
    long["timestamp"] = pd.to_datetime(long["timestamp"]).dt.tz_localize("UTC")
    return MeltBundle(metrics=long[["timestamp", "service", "metric", "value"]])


def per_timestamp(scores: pd.DataFrame) -> pd.Series:
    """The highest calibrated score per timestamp (per-metric detectors give one row per metric)."""
    return scores.groupby("timestamp")["score"].max()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--detectors", default="zscore,iforest,lstm_ae")
    parser.add_argument("--threshold", type=float, default=3.0)
    parser.add_argument("--smooth", type=int, default=10)
    parser.add_argument("--fuse", default="iforest,lstm_ae")
    args = parser.parse_args()
    names = args.detectors.split(",")
    fused = [n for n in args.fuse.split(",") if n in names]
    truth, predictions, seconds = [], {n: [] for n in [*names, "fusion"]}, dict.fromkeys(names, 0.0)
    points = 0
    files = skab_files(args.data)
    for i, path in enumerate(files, 1):
        frame = pd.read_csv(path, sep=";")
        train, test = to_bundle(frame.iloc[:TRAIN_ROWS]), to_bundle(frame.iloc[TRAIN_ROWS:])
        times = pd.to_datetime(frame["datetime"].iloc[TRAIN_ROWS:]).dt.tz_localize("UTC")
        truth.append(frame["anomaly"].iloc[TRAIN_ROWS:].to_numpy().astype(int))
        points += len(frame) * 8
        calibrated = []
        for name in names:
            began = time.perf_counter()
            params = {"smooth_window": args.smooth} if name in ("iforest", "lstm_ae") else {}
            scores = per_timestamp(build_detector(name, params).fit_calibrated(train).detect(test)).reindex(times).fillna(0.0)
            seconds[name] += time.perf_counter() - began
            if name in fused:
                calibrated.append(scores.to_numpy())
            predictions[name].append(scores.to_numpy() >= args.threshold)
        predictions["fusion"].append(np.mean(calibrated, axis=0) >= args.threshold if calibrated else np.zeros(len(times), bool))
        print(f"[{i}/{len(files)}] {path.parent.name}/{path.name}", file=sys.stderr, flush=True)
    y = np.concatenate(truth)
    print(f"SKAB: {len(files)} files, {y.size} test points ({y.mean():.1%} anomalous), threshold {args.threshold}, "
          f"smooth {args.smooth}, fusion = mean of {', '.join(fused)}\n")
    print("| detector | F1 | FAR | MAR | precision | recall | fit+score time | points/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, pred in predictions.items():
        m = pointwise(y, np.concatenate(pred))
        took = seconds[name] if name in seconds else sum(seconds[n] for n in fused)
        print(f"| melt {name} | {m['f1']:.3f} | {m['far']:.3f} | {m['mar']:.3f} | {m['precision']:.3f} | "
              f"{m['recall']:.3f} | {took:.1f} s | {points / took:,.0f} |")
    print("\npublished (same protocol): " + ", ".join(f"{k} {v:.2f}" for k, v in PUBLISHED.items()))
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
