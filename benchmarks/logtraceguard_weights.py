"""How far any weighting of LogTraceGuard's input groups can take the synthetic trace fault sets:
ROC AUC per fault type for each group alone, for the default weights, and the best lowest type
over a grid of weights; and how often the generator's own heavy tail makes a call as slow as
``span_latency``'s injected one.

Usage: python benchmarks/logtraceguard_weights.py [--seeds 1,2,3]

For each seed, ``logtraceguard`` is fitted unlabelled (the config's defaults) on the fault sets of
:mod:`benchmarks.trace_fault_sets`, and every trace's one-class components (``timing_nats``,
``structure_nats``, ``logs_nats``, ``errors_nats`` of ``trace_scores``) are kept. The one-class
score is the largest weighted component, so only the weights' ratios matter: timing stays at 1
and the grid moves structure, logs and errors. AUCs use every changed trace (the ablation
benchmark keeps 10% back for its labelled fits), so they differ from its table in the third
decimal.

The overlap: per seed, the share of normal test traces with a span whose self time (its duration
less its synchronous children's, ``span_latency.self_time_and_own_error``) is at least 5x its operation's median in training, and the same share among
the ``span_latency`` copies (one span and its ancestors 5x slower).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.trace_fault_sets import KINDS, fault_sets  # noqa: E402
from detectors.traces.ltg_one_class import COMPONENT_WEIGHTS, GROUPS  # noqa: E402
from detectors.traces.span_latency import self_time_and_own_error  # noqa: E402
from melt.core.config import load_settings  # noqa: E402
from melt.core.registry import build_detector  # noqa: E402

SLOW = 5.0  # span_latency's factor
GRID = {"structure": [0.5, 0.75, 1.0, 1.25, 1.5], "logs": [0.5, 0.75, 1.0, 1.25, 1.5, 2.0],
        "errors": [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.25, 1.5]}


def self_times(spans: pd.DataFrame) -> pd.Series:
    """Each span's self time (duration less its synchronous children's), per operation."""
    own = self_time_and_own_error(spans)
    return pd.Series(own["self_ms"].to_numpy(),
                     index=(spans["service_name"].astype(str) + " " + spans["span_name"].astype(str)).to_numpy())


def slow_share(spans: pd.DataFrame, medians: pd.Series) -> float:
    """The share of traces with a span at least :data:`SLOW` times its operation's median self time."""
    own = self_times(spans)
    ratio = own.to_numpy() / medians.reindex(own.index).to_numpy()
    return float(pd.Series(ratio >= SLOW).groupby(spans["trace_id"].to_numpy()).any().mean())


def components(seed: int, params: dict) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per set (``normal`` and :data:`KINDS`), traces x groups of nats; and the overlap shares."""
    data = fault_sets(seed)
    detector = build_detector("logtraceguard", {**params, "seed": seed}).fit_calibrated(data.train)
    columns = [f"{name}_nats" for name in GROUPS]
    out = {"normal": detector.trace_scores(data.bundle(data.normal))[0][columns].to_numpy()}
    for kind in KINDS:
        out[kind] = detector.trace_scores(data.bundle(data.sets[kind]))[0][columns].to_numpy()
    own = self_times(data.train.traces)
    medians = own.groupby(level=0).median()
    overlap = {"normal": slow_share(data.normal, medians), "span_latency": slow_share(data.sets["span_latency"], medians)}
    return out, overlap


def type_aucs(sets: list[dict[str, np.ndarray]], weights: np.ndarray) -> dict[str, float]:
    """Per kind, the mean over seeds of the ROC AUC of the largest weighted group."""
    out = {}
    for kind in KINDS:
        values = []
        for parts in sets:
            normal, faulty = (parts["normal"] * weights).max(axis=1), (parts[kind] * weights).max(axis=1)
            values.append(roc_auc_score(np.r_[np.zeros(normal.size), np.ones(faulty.size)], np.r_[normal, faulty]))
        out[kind] = float(np.mean(values))
    return out


def row(label: str, aucs: dict[str, float]) -> str:
    lowest = min(aucs.values())
    return f"| {label} | " + " | ".join(f"{aucs[k]:.4f}" for k in KINDS) + f" | {lowest:.4f} |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    params = load_settings(None).detector_params("logtraceguard")
    started = time.perf_counter()
    sets, overlaps = [], []
    for seed in seeds:
        parts, overlap = components(seed, params)
        sets.append(parts)
        overlaps.append(overlap)
        print(f"seed {seed}: fitted and scored ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    names = list(GROUPS)
    print("| weights (timing, structure, logs, errors) | " + " | ".join(KINDS) + " | lowest |")
    print("|---" * (len(KINDS) + 2) + "|")
    for i, name in enumerate(names):
        print(row(f"{name} alone", type_aucs(sets, np.eye(len(names))[i])))
    default = np.array([COMPONENT_WEIGHTS[name] for name in names])
    print(row(f"default {tuple(default.tolist())}", type_aucs(sets, default)))
    grid = []
    for structure, logs, errors in itertools.product(GRID["structure"], GRID["logs"], GRID["errors"]):
        weights = np.array([1.0, structure, logs, errors])
        grid.append((weights, type_aucs(sets, weights)))
    grid.sort(key=lambda item: -min(item[1].values()))
    for weights, aucs in grid[:5]:
        print(row(f"grid {tuple(weights.tolist())}", aucs))
    print(f"\n{len(grid)} weightings tried; the best lowest type: {min(grid[0][1].values()):.4f}")
    frontier = {}
    for weights, aucs in grid:
        errors = weights[3]
        best = frontier.get(errors)
        if best is None or min(aucs["span_latency"], aucs["error_burst"]) > min(best["span_latency"], best["error_burst"]):
            frontier[errors] = aucs
    print("errors weight -> best (span_latency, error_burst) over the other weights: " + "; ".join(
        f"{errors:g}: ({a['span_latency']:.4f}, {a['error_burst']:.4f})" for errors, a in sorted(frontier.items())))
    for seed, overlap in zip(seeds, overlaps, strict=True):
        print(f"seed {seed}: traces with a span >= {SLOW:g}x its operation's median self time: "
              f"normal {overlap['normal']:.3f}, span_latency {overlap['span_latency']:.3f}")
    print(f"wall {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
