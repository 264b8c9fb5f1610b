"""LogTraceGuard (``logtraceguard``) on the synthetic trace fault sets: ROC AUC per fault type,
unlabelled and with 10% of the fault traces labelled, for the full model and with each part
switched off; and scoring speed against one trace at a time.

Usage: python benchmarks/logtraceguard_ablation.py [--seeds 1,2,3] [--variants full,no_logs,...]
       [--traces 20000]

For each seed, the fault sets of :mod:`benchmarks.trace_fault_sets` (the ``gat_synth`` set: the
generator's latency and error_burst faults and five one-change copies of normal test traces, with
their log lines). Each variant is fitted twice on the first 35% of the day (fault-free):
- *unlabelled*: on that alone (one-class scoring);
- *10% labelled*: with 10% of every fault type's traces added to the training data and passed as
  ``labels`` (their ids), so that the PU head learns from them; those traces are left out of the
  test, and both modes are scored on the same remaining 90% against the normal test traces.
``gat_gae`` with its defaults is the reference row (unlabelled; it takes no labels).

Variants: ``full`` (the config's defaults), ``no_logs`` (``use_logs: false``), ``no_edges``
(``use_edges: false``), ``node_only`` / ``edge_only`` / ``graph_only`` / ``no_contrastive``
(``contrastive_levels``), ``no_feature_scores`` (``score_features: false``: the embedding and graph
distances alone), ``no_pu`` (``pu: false``: the labelled traces only leave the one-class fit).

Speed (last seed, full variant): the normal test traces and their log lines tiled (new trace ids)
to ``--traces`` traces, scored in batches with graph building included, against building and
scoring one trace at a time on 300 of them (the scores must agree within 1e-6).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.trace_fault_sets import KINDS, FaultSets, fault_sets  # noqa: E402
from melt.core.bundle import MeltBundle  # noqa: E402
from melt.core.config import load_settings  # noqa: E402
from melt.core.registry import build_detector  # noqa: E402

VARIANTS = {
    "full": {},
    "no_logs": {"use_logs": False},
    "no_edges": {"use_edges": False},
    "node_only": {"contrastive_levels": "node"},
    "edge_only": {"contrastive_levels": "edge"},
    "graph_only": {"contrastive_levels": "graph"},
    "no_contrastive": {"contrastive_levels": ""},
    "no_feature_scores": {"score_features": False},
    "no_pu": {"pu": False},
}
LABELLED_SHARE = 0.1


def labelled_split(data: FaultSets, seed: int) -> tuple[MeltBundle, list[str], dict[str, pd.DataFrame]]:
    """The training bundle with 10% of each fault set's traces added, their ids, and the other 90%."""
    rng = np.random.default_rng(seed + 1000)
    chosen, rest = [], {}
    for kind in KINDS:
        frame = data.sets[kind]
        ids = pd.unique(frame["trace_id"].astype(str))
        picked = rng.choice(ids, max(1, int(round(LABELLED_SHARE * ids.size))), replace=False)
        chosen.append(frame[frame["trace_id"].astype(str).isin(picked)])
        rest[kind] = frame[~frame["trace_id"].astype(str).isin(picked)]
    added = pd.concat(chosen, ignore_index=True)
    spans = pd.concat([data.train.traces, added[data.train.traces.columns]], ignore_index=True)
    labels = [str(i) for i in pd.unique(added["trace_id"].astype(str))]
    logs = pd.concat([data.train.logs, data.logs[data.logs["trace_id"].astype(str).isin(labels)]], ignore_index=True)
    return MeltBundle(traces=spans, logs=logs, validate=False), labels, rest


def aucs(detector, data: FaultSets, sets: dict[str, pd.DataFrame]) -> dict[str, float]:
    normal = detector.trace_scores(data.bundle(data.normal))[0]["score"].to_numpy()
    out = {}
    for kind in KINDS:
        anomalous = detector.trace_scores(data.bundle(sets[kind]))[0]["score"].to_numpy()
        labels = np.r_[np.zeros(normal.size), np.ones(anomalous.size)]
        out[kind] = float(roc_auc_score(labels, np.r_[normal, anomalous]))
    return out


def speed(detector, data: FaultSets, traces: int) -> None:
    normal, logs = data.normal, data.logs[data.logs["trace_id"].isin(pd.unique(data.normal["trace_id"]))]
    copies = int(np.ceil(traces / normal["trace_id"].nunique()))
    spans = pd.concat([normal.assign(trace_id=normal["trace_id"].astype(str) + f"-{i}") for i in range(copies)],
                      ignore_index=True)
    lines = pd.concat([logs.assign(trace_id=logs["trace_id"].astype(str) + f"-{i}") for i in range(copies)],
                      ignore_index=True)
    keep = pd.unique(spans["trace_id"])[:traces]
    big = MeltBundle(traces=spans[spans["trace_id"].isin(keep)].reset_index(drop=True),
                     logs=lines[lines["trace_id"].isin(keep)].reset_index(drop=True), validate=False)
    began = time.perf_counter()
    table = detector.trace_scores(big)[0]
    batched_s = time.perf_counter() - began
    print(f"\nbatched scoring of {len(table):,} traces ({len(big.traces):,} spans, {len(big.logs):,} log lines): "
          f"{batched_s:.1f} s, **{len(table) / batched_s:,.0f} traces/s** (graph building and template matching included)")
    sample_ids = table["trace_id"].to_numpy()[:300]
    sample = MeltBundle(traces=big.traces[big.traces["trace_id"].isin(sample_ids)],
                        logs=big.logs[big.logs["trace_id"].isin(sample_ids)], validate=False)
    began = time.perf_counter()
    batched = detector.trace_scores(sample)[0].set_index("trace_id")["score"]
    batched_sample_s = time.perf_counter() - began
    began = time.perf_counter()
    one_by_one = {}
    for trace_id, group in sample.traces.groupby("trace_id", sort=False):
        part = MeltBundle(traces=group, logs=sample.logs[sample.logs["trace_id"] == trace_id], validate=False)
        one_by_one[trace_id] = float(detector.trace_scores(part)[0]["score"].iloc[0])
    one_s = time.perf_counter() - began
    diff = np.abs(pd.Series(one_by_one).reindex(batched.index).to_numpy() - batched.to_numpy()).max()
    print(f"300 traces: batched {batched_sample_s * 1e3:.0f} ms; one trace at a time (build and score) {one_s * 1e3:.0f} ms "
          f"(**{one_s / batched_sample_s:.1f}x** slower; max |diff| {diff:.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--traces", type=int, default=20_000)
    parser.add_argument("--no-reference", action="store_true", help="skip the gat_gae row")
    args = parser.parse_args()
    base = load_settings(None).detector_params("logtraceguard")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    fits: dict[str, list[float]] = {}
    detector = data = None
    for seed in [int(s) for s in args.seeds.split(",")]:
        data = fault_sets(seed)
        train_labelled, labels, rest = labelled_split(data, seed)
        if not args.no_reference:
            reference = build_detector("gat_gae", {"seed": seed}).fit_calibrated(data.train)
            rows.setdefault(("gat_gae", "unlabelled"), []).append(aucs(reference, data, rest))
        for name in variants:
            params = {**base, **VARIANTS[name], "seed": seed}
            began = time.perf_counter()
            detector = build_detector("logtraceguard", params).fit_calibrated(data.train)
            fits.setdefault(name, []).append(time.perf_counter() - began)
            rows.setdefault((name, "unlabelled"), []).append(aucs(detector, data, rest))
            labelled = build_detector("logtraceguard", params).fit_calibrated(train_labelled, labels=labels)
            rows.setdefault((name, "10% labelled"), []).append(aucs(labelled, data, rest))
            print(f"seed {seed} {name}: done", file=sys.stderr, flush=True)
    print("| model | labels | " + " | ".join(KINDS) + " | mean |")
    print("|---|---|" + "---|" * (len(KINDS) + 1))
    for (name, mode), results in rows.items():
        table = pd.DataFrame(results)
        cells = [f"{table[k].mean():.3f} ({table[k].min():.3f}-{table[k].max():.3f})" for k in KINDS]
        print(f"| {name} | {mode} | " + " | ".join(cells) + f" | {table[KINDS].to_numpy().mean():.3f} |")
    print("\nWhat 10% labels add (labelled less unlabelled, mean over seeds, 4 decimals):")
    for name in variants:
        gain = pd.DataFrame(rows[(name, "10% labelled")])[KINDS].mean() - pd.DataFrame(rows[(name, "unlabelled")])[KINDS].mean()
        print(f"  {name}: " + ", ".join(f"{kind} {gain[kind]:+.4f}" for kind in KINDS))
    print("\nROC AUC, mean over seeds (min-max), on the 90% of each fault set no fit saw labelled. Fit times (unlabelled):")
    for name, seconds in fits.items():
        print(f"  {name}: {np.mean(seconds):.1f} s per fit")
    if detector is not None and data is not None and "full" in variants:
        full = build_detector("logtraceguard", {**base, "seed": int(args.seeds.split(",")[-1])}).fit_calibrated(data.train)
        speed(full, data, args.traces)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
