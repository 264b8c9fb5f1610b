"""Trace detectors on the real Nezha TrainTicket faults, trace by trace: ROC AUC of ``gat_gae``,
``teg`` and ``logtraceguard`` (unlabelled, and with 10% of the faulty traces labelled).

Usage: python benchmarks/traces_nezha.py DATA_DIR [--detectors gat_gae,teg,logtraceguard]
       [--labelled-share 0.1] [--seed 0] [--variants full,no_logs,...]

DATA_DIR is ``nezha-trainticket``; both subsets are imported as in ``logs_nezha.py`` (the 28 fault
cases and the fault-free minute). The unpacked ``nezha-onlineboutique`` runs the same way; its
fault types other than the three columns count only in "all". Labels come from the fault windows: a trace is *faulty* when it
starts inside a fault's window (``inject_time`` to the end ``truth.json`` gives) and passes through
the fault's root-cause service (``logtraceguard.truth_traces``); *normal* when it starts outside
every window and its 2 minutes of recovery. Other traces (inside a window, away from the root
cause) are left out.

Two folds by time, as in ``logs_nezha.py``: the day is split at the middle fault; each half is
scored by models fitted on the fault-free minute plus the other half's normal traces and their log
lines. ``logtraceguard (10% labelled)`` also gets a seeded 10% of the other half's faulty traces,
passed as ``labels``. ``--variants`` runs ``logtraceguard`` with each ablation switch of
``logtraceguard_ablation.py`` too (unlabelled and labelled). Each detector's raw trace scores (``score``) give one ROC AUC per half, over
all faulty traces and per fault type; the table gives the mean of the two halves.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.logs_nezha import combine, fault_windows, import_both, outside, select  # noqa: E402
from benchmarks.logtraceguard_ablation import VARIANTS  # noqa: E402
from detectors.traces.logtraceguard import truth_traces  # noqa: E402
from melt.core.bundle import MeltBundle  # noqa: E402
from melt.core.config import load_settings  # noqa: E402
from melt.core.registry import build_detector  # noqa: E402

TYPES = ("exception", "return", "cpu_contention")


def trace_scores(detector, bundle: MeltBundle) -> pd.Series:
    """Raw score per trace id, from the detector's rows (one per trace)."""
    rows = detector.score(bundle)
    ids = [evidence.get("trace_id") for evidence in rows["evidence"]]
    return pd.Series(rows["score"].to_numpy(dtype=float), index=pd.Index(ids, dtype=object)).groupby(level=0).max()


def faulty_by_type(bundle: MeltBundle) -> dict[str, set[str]]:
    """Faulty trace ids per fault type (each fault's window and root cause, as truth_traces reads them)."""
    out: dict[str, set[str]] = {}
    for fault in bundle.truth["faults"]:
        one = MeltBundle(traces=bundle.traces, truth={"faults": [fault]}, validate=False)
        out.setdefault(fault["type"], set()).update(truth_traces(one))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--detectors", default="gat_gae,teg,logtraceguard")
    parser.add_argument("--labelled-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default="full", help="logtraceguard ablation variants (logtraceguard_ablation.py)")
    args = parser.parse_args()
    names = args.detectors.split(",")
    config = load_settings(env={})
    rca, normal = import_both(args.data, config)
    windows, split = fault_windows(rca.truth["faults"])
    trace_start = rca.traces.groupby("trace_id")["start_time"].transform("min")
    trace_half = (trace_start >= split).to_numpy()
    log_half = (rca.logs["timestamp"] >= split).to_numpy()
    trace_normal = outside(trace_start, windows)
    log_normal = outside(rca.logs["timestamp"], windows)
    ids = rca.traces["trace_id"].astype(str)
    by_type = faulty_by_type(rca)
    faulty = set().union(*by_type.values())
    half_of = pd.Series(trace_half, index=ids).groupby(level=0).first()
    normal_ids = set(pd.unique(ids[trace_normal]))
    rng = np.random.default_rng(args.seed)

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    runs = [(name, variant, with_labels) for name in names for variant in (variants if name == "logtraceguard" else [""])
            for with_labels in ((False, True) if name == "logtraceguard" else (False,))]
    results: dict[str, list[dict[str, float]]] = {}
    counts, timings = [], []
    for half in (False, True):
        train = combine(normal, select(rca, log_normal & (log_half != half), trace_normal & (trace_half != half)))
        test_faulty = {i for i in faulty if half_of.get(i) == half}
        test_normal = {i for i in normal_ids if half_of.get(i) == half}
        keep = ids.isin(test_faulty | test_normal).to_numpy()
        test = MeltBundle(traces=rca.traces[keep].reset_index(drop=True),
                          logs=rca.logs[rca.logs["trace_id"].astype(str).isin(test_faulty | test_normal)], validate=False)
        other_faulty = sorted(i for i in faulty if half_of.get(i) != half)
        labelled = list(rng.choice(other_faulty, max(1, int(round(args.labelled_share * len(other_faulty)))), replace=False))
        counts.append(f"half {int(half)}: trained on {train.traces['trace_id'].nunique():,} traces; scored "
                      f"{len(test_faulty):,} faulty and {len(test_normal):,} normal traces; {len(labelled):,} labelled "
                      f"for the labelled run (of {len(other_faulty):,} faulty in the other half)")
        for name, variant, with_labels in runs:
            label = name + (f" [{variant}]" if variant and variant != "full" else "") + \
                (f" ({args.labelled_share:.0%} labelled)" if with_labels else "")
            params = {**config.detector_params(name), **VARIANTS.get(variant, {})}
            began = time.perf_counter()
            if with_labels:
                extra = rca.traces[ids.isin(labelled).to_numpy()]
                bundle = MeltBundle(traces=pd.concat([train.traces, extra], ignore_index=True),
                                    logs=pd.concat([train.logs, rca.logs[rca.logs["trace_id"].astype(str).isin(labelled)]],
                                                   ignore_index=True), validate=False)
                detector = build_detector(name, params).fit_calibrated(bundle, labels=labelled)
            else:
                detector = build_detector(name, params).fit_calibrated(train)
            fit_s = time.perf_counter() - began
            scores = trace_scores(detector, test)
            timings.append(f"{label} half {int(half)}: fit {fit_s:.1f} s")
            row = {}
            negatives = scores.reindex(sorted(test_normal)).dropna()
            for kind, members in [("all", test_faulty), *((t, by_type.get(t, set()) & test_faulty) for t in TYPES)]:
                positives = scores.reindex(sorted(members)).dropna()
                if len(positives) and len(negatives):
                    truth = np.r_[np.zeros(len(negatives)), np.ones(len(positives))]
                    row[kind] = float(roc_auc_score(truth, np.r_[negatives.to_numpy(), positives.to_numpy()]))
            results.setdefault(label, []).append(row)
            print(f"{label} half {int(half)}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), file=sys.stderr, flush=True)

    print("| detector | ROC AUC, all faulty traces | exception | return | cpu_contention |")
    print("|---|---|---|---|---|")
    for label, rows in results.items():
        frame = pd.DataFrame(rows)
        cells = [f"{frame[k].mean():.3f} ({frame[k].min():.3f} / {frame[k].max():.3f})" if k in frame else "-"
                 for k in ("all", *TYPES)]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\nmean of the two halves (lower / higher half)")
    for line in counts + timings:
        print(line)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
