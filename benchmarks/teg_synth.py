"""The trace-event-graph detector on synthetic error and exception faults: AUC, attribution, speed.

Usage: python benchmarks/teg_synth.py [--seeds 1,2,3,4,5] [--threshold 4.0]

For each seed: the default generator (12 services, 2 h) with four faults alternating error_burst
and bad_deploy. ``teg`` is fitted on the first 35% and scores every trace. Reported on the traces
after the training period:
- trace-level ROC AUC of the score against the trace label (a trace is anomalous when a fault
  changed one of its spans);
- among fault traces flagged at the threshold (calibrated score), the share attributed to the root
  cause or a direct caller of it;
- training and scoring throughput in graphs/s, and peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from melt.core.registry import build_detector
from melt.core.settings import SynthSettings
from melt.pipeline.fitting import training_split
from synth.generate import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--threshold", type=float, default=4.0)
    args = parser.parse_args()
    print("| seed | train traces | fit s | train graphs/s | scored traces | score s | score graphs/s | test AUC | fault traces | flagged | root or caller |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    aucs, flagged_total, ok_total = [], 0, 0
    for seed in [int(s) for s in args.seeds.split(",")]:
        bundle = generate(SynthSettings.of(seed=seed, faults=4, fault_types=["error_burst", "bad_deploy"]))
        train = training_split(bundle, 0.35)
        began = time.perf_counter()
        detector = build_detector("teg").fit_calibrated(train)
        fit_s = time.perf_counter() - began
        n_train = train.traces["trace_id"].nunique()
        began = time.perf_counter()
        scores = detector.detect(bundle)
        score_s = time.perf_counter() - began
        trace_ids = scores["evidence"].map(lambda e: e["trace_id"])
        label = bundle.traces.groupby("trace_id")["label"].max().reindex(trace_ids).to_numpy()
        test = (scores["timestamp"] > train.traces["start_time"].max()).to_numpy()
        auc = roc_auc_score(label[test], scores["score"].to_numpy()[test])
        aucs.append(auc)
        edges = bundle.truth["generator"]["edges"]
        flagged = ok = 0
        for fault in bundle.truth["faults"]:
            root = fault["root_cause_service"]
            allowed = {root} | {a for a, b in edges if b == root}
            window = (scores["timestamp"] >= pd.Timestamp(fault["start"])) & (scores["timestamp"] < pd.Timestamp(fault["end"]))
            hit = test & window.to_numpy() & (label == 1) & (scores["score"].to_numpy() >= args.threshold)
            flagged += int(hit.sum())
            ok += int(scores["service"][hit].isin(allowed).sum())
        flagged_total += flagged
        ok_total += ok
        print(f"| {seed} | {n_train:,} | {fit_s:.1f} | {n_train / fit_s:,.0f} | {len(scores):,} | {score_s:.1f} | "
              f"{len(scores) / score_s:,.0f} | {auc:.3f} | {int((label[test] == 1).sum())} | {flagged} | "
              f"{ok / flagged if flagged else float('nan'):.2f} |")
    print(f"\nmean test AUC {np.mean(aucs):.3f}; flagged fault traces attributed to the root cause or a direct caller: "
          f"{ok_total}/{flagged_total} = {ok_total / max(flagged_total, 1):.2f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
