"""The GAT graph autoencoder (``gat_gae``) on synthetic traces: AUC per fault type, batched against
one-graph-at-a-time scoring, and speed on 100k traces.

Usage: python benchmarks/gat_synth.py [--seeds 1,2,3] [--traces 100000]

For each seed: the default generator (12 services, 2 h) with four faults alternating latency and
error_burst. ``gat_gae`` is fitted on the first 35% (fault-free). The normal test set is every later
trace that no fault touched. Anomalies, each scored against the normal test set (ROC AUC):
- ``latency`` and ``error_burst``: the generator's own fault traces (label 1);
- ``span_latency``: a copy of up to 300 normal test traces where one non-root span and its ancestors
  take 5x longer (the extra time added up the tree);
- ``span_error``: one span and its ancestors return 500;
- ``missing_call``: one non-root span is removed with its subtree (it may be an optional call, one
  that normal traces of the same operation also skip);
- ``missing_usual_call``: the same, choosing only among calls their caller's operation makes in at
  least 90% of its training spans (``learn_baselines``), so the trace really lacks something;
- ``extra_call``: one span gets an extra child: a call to an operation taken from another trace.
Traces with no span to change (a single-span trace for the non-root changes) are left out of the
anomaly set. Every trace score is reported with the three aggregations (max, mean, percentile_95).

Speed (last seed): the normal test traces tiled (new trace ids) to ``--traces`` traces, scored in
batches; against scoring one graph at a time on 300 traces, both as model passes over prebuilt
graphs and as the seed tools do it (build one trace's graph, then score it); scores must agree
within 1e-5. Training time per epoch comes from the fit.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from detectors.traces.gat_gae import AGGREGATIONS
from detectors.traces.gat_graphs import learn_baselines
from melt.core.bundle import MeltBundle
from melt.core.registry import build_detector
from melt.core.settings import SynthSettings
from melt.pipeline.fitting import training_split
from synth.generate import generate

MUTATED = 300


def ancestors_mask(parent: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rows that are a target or an ancestor of one (pointer jumping, vectorised over targets)."""
    mask = np.zeros(parent.size, dtype=bool)
    current = targets.copy()
    while current.size:
        mask[current] = True
        current = parent[current]
        current = current[current >= 0]
    return mask


def descendants_mask(parent: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rows that are a target or below one."""
    is_target = np.zeros(parent.size, dtype=bool)
    is_target[targets] = True
    mask, ancestor = is_target.copy(), parent.copy()
    while (ancestor >= 0).any():
        alive = ancestor >= 0
        mask[alive] |= is_target[ancestor[alive]]
        ancestor[alive] = parent[ancestor[alive]]
    return mask


def mutate(spans: pd.DataFrame, kind: str, rng: np.random.Generator, donors: pd.DataFrame,
           usual_calls: pd.MultiIndex | None = None) -> pd.DataFrame:
    """``MUTATED`` traces of ``spans`` with one injected change of ``kind``, under new trace ids."""
    chosen = rng.choice(spans["trace_id"].unique(), MUTATED, replace=False)
    part = spans[spans["trace_id"].isin(chosen)].reset_index(drop=True).copy()
    part["trace_id"] = part["trace_id"].astype(str) + f"-{kind}"
    part["label"] = 1
    key = pd.MultiIndex.from_arrays([part["trace_id"], part["span_id"]])
    parent = key.get_indexer(pd.MultiIndex.from_arrays([part["trace_id"], part["parent_span_id"].fillna("")]))
    candidates = part[parent >= 0] if kind != "extra_call" else part
    if kind == "missing_usual_call":
        operation = (part["service_name"].astype(str) + " " + part["span_name"].astype(str)).to_numpy(dtype=object)
        caller = np.where(parent >= 0, operation[np.maximum(parent, 0)], "")
        usual = (parent >= 0) & pd.MultiIndex.from_arrays([caller, operation]).isin(usual_calls)
        candidates = part[usual]
    target = candidates.groupby("trace_id").sample(1, random_state=int(rng.integers(1 << 31))).index.to_numpy()
    changed = part.loc[target, "trace_id"].unique()  # a trace without a candidate span stays out
    if kind == "span_latency":
        added = np.zeros(len(part))
        current, amount = target, part.loc[target, "duration"].to_numpy() * 4.0
        while current.size:  # walk every target's ancestors at once, one level per pass
            np.add.at(added, current, amount)
            up = parent[current]
            current, amount = up[up >= 0], amount[up >= 0]
        part["duration"] = part["duration"] + added
    elif kind == "span_error":
        part.loc[ancestors_mask(parent, target), "status_code"] = 500
    elif kind in ("missing_call", "missing_usual_call"):
        part = part[~descendants_mask(parent, target)]
    elif kind == "extra_call":
        donor = donors.sample(len(target), random_state=int(rng.integers(1 << 31)), replace=True).reset_index(drop=True)
        new = donor.copy()
        new["trace_id"] = part.loc[target, "trace_id"].to_numpy()
        new["parent_span_id"] = part.loc[target, "span_id"].to_numpy()
        new["span_id"] = [f"x{i:015x}" for i in range(len(new))]
        new["start_time"] = part.loc[target, "start_time"].to_numpy() + pd.Timedelta("1ms")
        new["label"] = 1
        part = pd.concat([part, new[part.columns]], ignore_index=True)
    return part[part["trace_id"].isin(changed)]


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
    kinds = ["latency", "error_burst", "span_latency", "span_error", "missing_call", "missing_usual_call", "extra_call"]
    results: dict[str, list[list[float]]] = {k: [] for k in kinds}
    fits = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        bundle = generate(SynthSettings.of(seed=seed, faults=4, fault_types=["latency", "error_burst"]))
        train = training_split(bundle, 0.35)
        began = time.perf_counter()
        detector = build_detector("gat_gae", {"seed": seed}).fit_calibrated(train)
        fit_s = time.perf_counter() - began
        fits.append((seed, train.traces["trace_id"].nunique(), len(detector.history_), fit_s))
        spans = bundle.traces
        trace_start = spans.groupby("trace_id")["start_time"].transform("min")
        later = spans[trace_start > train.traces["start_time"].max()]
        trace_label = later.groupby("trace_id")["label"].max()
        normal = later[later["trace_id"].isin(trace_label.index[trace_label == 0])]
        faults = {f["id"]: f["type"] for f in bundle.truth["faults"]}
        sets = {}
        for fault_type in ("latency", "error_burst"):
            ids = set()
            for fault in bundle.truth["faults"]:
                if fault["type"] != fault_type:
                    continue
                window = (later["start_time"] >= pd.Timestamp(fault["start"])) & (later["start_time"] < pd.Timestamp(fault["end"]))
                ids |= set(later.loc[window & (later["label"] == 1), "trace_id"])
            sets[fault_type] = later[later["trace_id"].isin(ids)]
        rng = np.random.default_rng(seed)
        usual_calls = learn_baselines(train.traces).usual_calls
        for kind in kinds[2:]:
            sets[kind] = mutate(normal, kind, rng, train.traces, usual_calls)
        del faults

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
