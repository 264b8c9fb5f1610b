"""Metric detectors on synthetic data: detection quality against the labels, and speed at scale.

Usage:
  python benchmarks/metrics_synth.py quality [--seeds 1,...,10] [--thresholds 4,6,8]
  python benchmarks/metrics_synth.py speed [--services 50 --duration 24h --requests-per-minute 40]

quality: for each seed, the default generator (12 services, 2 h, realistic preset) with three
faults of the metric-visible types (latency, cpu_saturation, memory_leak, pool_exhaustion,
cycled). Each detector is fitted on the first 35% and scores the rest. An alert is a calibrated
score >= threshold (4.0 is the ensemble's default). Event-wise: a fault is found when an alert on
one of its affected services falls inside its window (+5 min); a false alarm is an alert episode
(alerts merged across gaps of <= 5 min) on a service that no fault affects at that time.
Point-wise: precision, recall and F1 of (service, minute) alerts against the metric labels.

speed: one large bundle; each detector is fitted and scored in its own process, reporting
points/s for fit and score, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from melt.core.bundle import MeltBundle
from melt.core.registry import build_detector
from melt.core.settings import SynthSettings
from melt.evaluation.scoring import eventwise, pointwise
from melt.pipeline.fitting import training_split
from synth.generate import generate

DETECTORS = ["zscore", "iforest", "lstm_ae", "changepoint"]
METRIC_FAULTS = ["latency", "cpu_saturation", "memory_leak", "pool_exhaustion"]


def quality(seeds: list[int], thresholds: list[float], names: list[str]) -> None:
    rows: dict[tuple[str, float], dict] = {}
    service_days = 0.0
    for seed in seeds:
        bundle = generate(SynthSettings.of(seed=seed, faults=3, fault_types=METRIC_FAULTS[seed % 4:] + METRIC_FAULTS[:seed % 4]))
        train = training_split(bundle, 0.35)
        test_start = train.metrics["timestamp"].max()
        test = MeltBundle(metrics=bundle.metrics[bundle.metrics["timestamp"] > test_start])
        service_days += test.metrics["service"].nunique() * (test.metrics["timestamp"].max() - test_start) / pd.Timedelta("1D")
        labels = test.metrics.groupby(["service", "timestamp"])["label"].max()
        for name in names:
            scores = build_detector(name).fit_calibrated(train).detect(test)
            per_minute = scores.groupby(["service", "timestamp"])["score"].max()
            for threshold in thresholds:
                alerts = per_minute[per_minute >= threshold].reset_index()[["service", "timestamp"]]
                result = eventwise(alerts, bundle.truth["faults"])
                t = rows.setdefault((name, threshold), {"faults": 0, "found": 0, "false_alarms": 0, "y": [], "p": [], "by_type": {}})
                t["faults"] += result["faults"]
                t["found"] += result["found"]
                t["false_alarms"] += result["false_alarms"]
                for fault, hit in zip(bundle.truth["faults"], result["found_per_fault"], strict=True):
                    t["by_type"].setdefault(fault["type"], []).append(hit)
                t["y"].append(labels.to_numpy())
                t["p"].append(per_minute.reindex(labels.index).fillna(0).to_numpy() >= threshold)
        print(f"seed {seed} done", file=sys.stderr, flush=True)
    print(f"{len(seeds)} bundles, {service_days:.2f} service-days scored\n")
    print("| detector | threshold | faults found | recall | by type | false alarms | per service per day | point P | point R | point F1 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (name, threshold), t in rows.items():
        m = pointwise(np.concatenate(t["y"]), np.concatenate(t["p"]))
        by_type = ", ".join(f"{k.split('_')[0]} {sum(v)}/{len(v)}" for k, v in sorted(t["by_type"].items()))
        print(f"| {name} | {threshold:g} | {t['found']}/{t['faults']} | {t['found'] / t['faults']:.2f} | {by_type} | "
              f"{t['false_alarms']} | {t['false_alarms'] / service_days:.2f} | {m['precision']:.2f} | {m['recall']:.2f} | "
              f"{m['f1']:.2f} |")


def speed_one(name: str, data: Path) -> dict:
    bundle = MeltBundle.read(data, signals=["metrics"])
    train = training_split(bundle, 0.35)
    detector = build_detector(name)
    began = time.perf_counter()
    detector.fit_calibrated(train)
    fitted = time.perf_counter() - began
    began = time.perf_counter()
    scores = detector.detect(bundle)
    scored = time.perf_counter() - began
    return {"detector": name, "train_points": len(train.metrics), "fit_s": fitted, "points": len(bundle.metrics),
            "score_s": scored, "rows": len(scores), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def speed(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="melt-metrics-"))
    # generate in a child too: Linux carries a parent's peak RSS into forked children's ru_maxrss
    subprocess.run([sys.executable, "-m", "melt.cli", "generate", "--out", str(root / "big"), "--services", str(args.services),
                    "--duration", args.duration, "--requests-per-minute", str(args.requests_per_minute), "--faults", "14",
                    "--fault-duration", "20m", "--seed", "1"], check=True, capture_output=True)
    points = len(pd.read_parquet(root / "big" / "metrics.parquet", columns=["value"]))
    print(f"bundle: {args.services} services, {args.duration}, {points:,} metric points\n")
    print("| detector | fit points | fit time | fit points/s | score points | score time | score points/s | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for name in DETECTORS:
        out = subprocess.run([sys.executable, __file__, "_one", name, str(root / "big")], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['train_points']:,} | {r['fit_s']:.1f} s | {r['train_points'] / r['fit_s']:,.0f} | "
              f"{r['points']:,} | {r['score_s']:.1f} s | {r['points'] / r['score_s']:,.0f} | {r['peak_mb']:,.0f} MB |")
    shutil.rmtree(root)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_one":
        print(json.dumps(speed_one(sys.argv[2], Path(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--seeds", default="1,2,3,4,5,6,7,8,9,10")
    q.add_argument("--thresholds", default="4,6,8", help="calibrated-score alert thresholds to report")
    q.add_argument("--detectors", default=",".join(DETECTORS))
    s = sub.add_parser("speed")
    s.add_argument("--services", type=int, default=50)
    s.add_argument("--duration", default="24h")
    s.add_argument("--requests-per-minute", type=float, default=40.0)
    args = parser.parse_args()
    if args.mode == "quality":
        quality([int(x) for x in args.seeds.split(",")], [float(x) for x in args.thresholds.split(",")],
                args.detectors.split(","))
    else:
        speed(args)


if __name__ == "__main__":
    main()
