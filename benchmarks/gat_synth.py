"""The GAT graph autoencoder (``gat_gae``) on synthetic traces: AUC per fault type, batched against
one-graph-at-a-time scoring, and speed on 100k traces.

Usage: python benchmarks/gat_synth.py [--seeds 1,2,3] [--traces 100000]

For each seed, the fault sets of :mod:`benchmarks.trace_fault_sets` (the default generator with
four latency and error_burst faults, and five kinds of one-change copies of normal test traces);
``gat_gae`` is fitted on the first 35% (fault-free), and each anomaly set is scored against the
normal test set (ROC AUC). Every trace score is reported with the three aggregations (max, mean,
percentile_95).

Speed (last seed): the normal test traces tiled (new trace ids) to ``--traces`` traces, scored in
batches; against scoring one graph at a time on 300 traces, both as model passes over prebuilt
graphs and as the seed tools do it (build one trace's graph, then score it); scores must agree
within 1e-5. Training time per epoch comes from the fit.
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

from benchmarks.trace_fault_sets import KINDS, MUTATED, fault_sets  # noqa: E402
from detectors.traces.gat_gae import AGGREGATIONS  # noqa: E402
from melt.core.bundle import MeltBundle  # noqa: E402
from melt.core.registry import build_detector  # noqa: E402


def auc_row(name: str, table_normal: dict, table_anomal: dict) -> list[float]:
    out = []
    for how in AGGREGATIONS:
        normal, anomal = table_normal[how], table_anomal[how]
        labels = np.r_[np.zeros(len(normal)), np.ones(len(anomal))]
        out.append(roc_auc_score(labels, np.r_[normal, anomal]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--traces", type=int, default=100_000)
    args = parser.parse_args()
    kinds = KINDS
    results: dict[str, list[list[float]]] = {k: [] for k in kinds}
    fits = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        data = fault_sets(seed)
        train, normal, sets = data.train, data.normal, data.sets
        began = time.perf_counter()
        detector = build_detector("gat_gae", {"seed": seed}).fit_calibrated(train)
        fit_s = time.perf_counter() - began
        fits.append((seed, train.traces["trace_id"].nunique(), len(detector.history_), fit_s))

        def scored(frame: pd.DataFrame, fitted=detector) -> dict[str, np.ndarray]:
            bundle_part = MeltBundle(traces=frame, validate=False)
            return {how: fitted.trace_scores(bundle_part, aggregation=how)[0]["score"].to_numpy() for how in AGGREGATIONS}

        normal_scores = scored(normal)
        for kind in kinds:
            results[kind].append(auc_row(kind, normal_scores, scored(sets[kind])))

    print("| fault type | " + " | ".join(f"AUC ({how})" for how in AGGREGATIONS) + " |")
    print("|---|" + "---|" * len(AGGREGATIONS))
    for kind in kinds:
        rows = np.array(results[kind])
        cells = [f"{m:.3f} ({lo:.3f}-{hi:.3f})" for m, lo, hi in zip(rows.mean(0), rows.min(0), rows.max(0), strict=True)]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    print("\nmean over seeds (min-max). Fits:")
    for seed, n, epochs, fit_s in fits:
        print(f"  seed {seed}: {n:,} training traces, {epochs} epochs, {fit_s:.1f} s ({fit_s / epochs:.2f} s per epoch incl. validation)")

    # ---------------------------------------------------------------- speed on the last seed
    ids = normal["trace_id"].unique()
    copies = int(np.ceil(args.traces / len(ids)))
    tiled = pd.concat([normal.assign(trace_id=normal["trace_id"].astype(str) + f"-{i}") for i in range(copies)],
                      ignore_index=True)
    keep = tiled["trace_id"].isin(pd.unique(tiled["trace_id"])[: args.traces])
    big = MeltBundle(traces=tiled[keep].reset_index(drop=True), validate=False)
    began = time.perf_counter()
    table, graphs, _ = detector.trace_scores(big)
    batched_s = time.perf_counter() - began
    print(f"\nbatched scoring of {len(table):,} traces ({len(big.traces):,} spans): {batched_s:.1f} s, "
          f"{len(table) / batched_s:,.0f} traces/s (graph building included)")

    sample = big.traces[big.traces["trace_id"].isin(table["trace_id"][:MUTATED])]
    sample_graphs = detector._graphs(sample)
    began = time.perf_counter()
    batched = detector.span_scores(sample_graphs)
    batched_sample_s = time.perf_counter() - began
    began = time.perf_counter()
    one_by_one = np.concatenate([detector.span_scores(sample_graphs, np.array([t]), batch_size=1)
                                 for t in range(sample_graphs.n_traces)])
    model_only_s = time.perf_counter() - began
    began = time.perf_counter()
    seed_style = [detector.span_scores(detector._graphs(group)) for _, group in sample.groupby("trace_id", sort=True)]
    seed_style_s = time.perf_counter() - began
    order = np.argsort(sample_graphs.trace_id.astype(str), kind="stable")
    seed_scores = np.concatenate([seed_style[i] for i in np.argsort(order)]) if len(seed_style) else np.zeros(0)
    print(f"{MUTATED} traces: batched {batched_sample_s * 1e3:.0f} ms; one graph per pass {model_only_s * 1e3:.0f} ms "
          f"({model_only_s / batched_sample_s:.1f}x slower, max |diff| {np.abs(one_by_one - batched).max():.1e}); "
          f"build and score one trace at a time {seed_style_s * 1e3:.0f} ms ({seed_style_s / batched_sample_s:.1f}x slower, "
          f"max |diff| {np.abs(np.sort(seed_scores) - np.sort(batched)).max():.1e})")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
