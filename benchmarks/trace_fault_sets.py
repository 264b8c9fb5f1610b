"""The synthetic trace fault sets of the trace-model benchmarks (``gat_synth``, ``logtraceguard_ablation``).

For a seed: the default generator (12 services, 2 h) with four faults alternating latency and
error_burst; training data is the first 35% (fault-free). The normal test set is every later trace
that no fault touched. Anomaly sets:
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
anomaly set. A changed copy keeps the log lines of its spans (under its new trace id), so a
log-aware model sees the same lines as in the original.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from detectors.traces.gat_graphs import learn_baselines
from melt.core.bundle import MeltBundle
from melt.core.settings import SynthSettings
from melt.pipeline.fitting import training_split
from synth.generate import generate

KINDS = ["latency", "error_burst", "span_latency", "span_error", "missing_call", "missing_usual_call", "extra_call"]

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



@dataclass
class FaultSets:
    """A seed's training bundle, its normal test traces and the anomaly sets (spans and their log lines)."""

    train: MeltBundle
    normal: pd.DataFrame
    sets: dict[str, pd.DataFrame]
    logs: pd.DataFrame  # every log line of the bundle, and of the changed copies under their new ids

    def bundle(self, spans: pd.DataFrame) -> MeltBundle:
        """A bundle of ``spans`` with the log lines of their traces."""
        logs = self.logs[self.logs["trace_id"].isin(pd.unique(spans["trace_id"]))]
        return MeltBundle(traces=spans, logs=logs, validate=False)


def fault_sets(seed: int) -> FaultSets:
    """The training bundle, the normal test traces and one anomaly set per kind of :data:`KINDS`."""
    bundle = generate(SynthSettings.of(seed=seed, faults=4, fault_types=["latency", "error_burst"]))
    train = training_split(bundle, 0.35)
    spans = bundle.traces
    trace_start = spans.groupby("trace_id")["start_time"].transform("min")
    later = spans[trace_start > train.traces["start_time"].max()]
    trace_label = later.groupby("trace_id")["label"].max()
    normal = later[later["trace_id"].isin(trace_label.index[trace_label == 0])]
    sets = {}
    for fault_type in ("latency", "error_burst"):
        ids: set = set()
        for fault in bundle.truth["faults"]:
            if fault["type"] != fault_type:
                continue
            window = (later["start_time"] >= pd.Timestamp(fault["start"])) & (later["start_time"] < pd.Timestamp(fault["end"]))
            ids |= set(later.loc[window & (later["label"] == 1), "trace_id"])
        sets[fault_type] = later[later["trace_id"].isin(ids)]
    rng = np.random.default_rng(seed)
    usual_calls = learn_baselines(train.traces).usual_calls
    for kind in KINDS[2:]:
        sets[kind] = mutate(normal, kind, rng, train.traces, usual_calls)
    logs = bundle.logs[bundle.logs["trace_id"].notna()]
    copies = [logs]
    for kind in KINDS[2:]:
        original = logs[logs["trace_id"].isin(pd.unique(sets[kind]["trace_id"].str.removesuffix(f"-{kind}")))]
        copies.append(original.assign(trace_id=original["trace_id"].astype(str) + f"-{kind}"))
    return FaultSets(train, normal, sets, pd.concat(copies, ignore_index=True))
