"""How well can any detector separate the ``span_latency`` fault set? Two reference figures.

Usage: python benchmarks/span_latency_ceiling.py [--seeds 1,2,3]

1. **Oracle (an upper bound).** The generator's own spans for a seed (``synth.workload``: the
   default 12 services, 2 h), with a client node for each remote synchronous call as the bundle
   has. The oracle sees each span's exact own work and knows its law: server work is
   ``base[service] x body x tail`` with body ~ LogNormal(0, 0.45) and tail = 1 (p 0.99) or
   4 x Lomax(2.5) + 1; a client span's own time is the network's LogNormal(log 0.4 ms, 0.5).
   The fault is applied as :mod:`benchmarks.trace_fault_sets` does: one non-root span, chosen
   uniformly, takes 5x its duration, the added time climbing every ancestor. Under "span i was hit",
   i's original own work is its observed own work less 0.8 x its observed duration (and a parent
   reached through an async call grew by as much). A trace's likelihood ratio is the mean, over
   its non-root spans, of p(original)/p(observed) over what that hypothesis changed: the
   Neyman-Pearson statistic for this fault, so its ROC AUC (300 changed traces against every
   later normal trace) bounds what any timing-based detector can reach on these traces.
2. **One plain statistic, on the benchmark's own fault sets.** Per trace, the largest robust
   z-score of log own time (duration less synchronous children) against the training spans of
   the same service, name and kind (median and 1.4826 x MAD, learned on the first 35%). No
   network and no labels: the baseline that a learned detector should at least match.
3. **Why the oracle is out of a general detector's reach.** For server own work, the rarity of a
   call m times its base against the oracle's log likelihood ratio that it was slowed 5x
   (:func:`ratio_against_rarity`): the ratio falls back in the Pareto tail.

The log-trace-guard and ``gat_gae`` figures for the same sets are in ``logtraceguard_ablation.py``
and ``gat_synth.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.trace_fault_sets import KINDS, MUTATED, fault_sets  # noqa: E402
from detectors.robust import robust_baseline  # noqa: E402
from detectors.traces.gat_graphs import depths  # noqa: E402
from detectors.traces.span_latency import self_time_and_own_error  # noqa: E402
from melt.core.settings import SynthSettings  # noqa: E402
from synth.calls import CALL_OVERHEAD_MS, NETWORK_MEDIAN_MS, network_time, remote_calls  # noqa: E402
from synth.topology import random_topology  # noqa: E402
from synth.workload import arrival_times, build_templates, expand_requests  # noqa: E402

BODY_SIGMA, TAIL_P, TAIL_ALPHA, TAIL_SCALE = 0.45, 0.01, 2.5, 4.0  # synth.workload.expand_requests
NETWORK_SIGMA = 0.5  # synth.calls.network_time
FACTOR = 5.0  # trace_fault_sets.mutate: span_latency


def server_log_density() -> tuple[np.ndarray, np.ndarray]:
    """log p(f) of own work over its service's base, f = body x tail, on a grid of log f."""
    log_f = np.linspace(-6, 8, 4001)
    normal = lambda v: np.exp(-v**2 / (2 * BODY_SIGMA**2)) / (BODY_SIGMA * np.sqrt(2 * np.pi))  # noqa: E731
    log_t = np.linspace(0, 9, 3001)
    step = log_t[1] - log_t[0]
    t = np.exp(log_t)
    tail = TAIL_ALPHA / (1 + (t - 1) / TAIL_SCALE) ** (TAIL_ALPHA + 1) / TAIL_SCALE * t  # density of log t
    tail /= tail.sum() * step
    with_tail = (normal(log_f[:, None] - log_t[None, :]) * tail[None, :]).sum(axis=1) * step
    density_of_log = (1 - TAIL_P) * normal(log_f) + TAIL_P * with_tail
    return log_f, np.log(np.maximum(density_of_log, 1e-300)) - log_f


class GeneratedSpans:
    """A seed's fault-free spans as the generator draws them, client nodes added."""

    def __init__(self, seed: int) -> None:
        config = SynthSettings.of(seed=seed, faults=4, fault_types=["latency", "error_burst"])
        rng = np.random.default_rng(seed)
        topology = random_topology(config.services, config.endpoints_per_service, rng)
        minutes = int(config.duration / pd.Timedelta(minutes=1))
        times = arrival_times(config.start, minutes, config.requests_per_minute, [], rng)
        spans = expand_requests(topology, build_templates(topology), times, rng)
        gap = network_time(spans, rng)
        n_server = spans.size
        clients = np.flatnonzero(remote_calls(spans))
        self.parent = np.r_[spans.parent, spans.parent[clients]]
        self.parent[clients] = n_server + np.arange(clients.size)
        self.is_async = np.r_[spans.is_async, np.zeros(clients.size, bool)]
        self.is_client = np.r_[np.zeros(n_server, bool), np.ones(clients.size, bool)]
        self.request = np.r_[spans.request, spans.request[clients]]
        self.own_ms = np.r_[spans.self_ms, gap[clients] + CALL_OVERHEAD_MS]
        self.scale = np.r_[topology.base_latency_ms[spans.service], np.full(clients.size, NETWORK_MEDIAN_MS)]
        n = self.parent.size
        depth = depths(self.parent)
        self.duration = self.own_ms.copy()
        for d in range(int(depth.max()), 0, -1):
            level = np.flatnonzero((depth == d) & ~self.is_async)
            added = self.duration[level] + np.where(self.is_client[level], 0.0, CALL_OVERHEAD_MS)
            self.duration += np.bincount(self.parent[level], weights=added, minlength=n)
        self.changed = self._changed_by_each(depth)
        self.log_f, self.log_p = server_log_density()

    def _changed_by_each(self, depth: np.ndarray) -> np.ndarray:
        """Per span (a row, -1 padded): the spans whose own time its slow-down changes: itself, and
        each parent reached through an async call on its way to the root (async time is not in its
        parent's children sum). Built level by level from the parent's row."""
        n = self.parent.size
        crossed = np.zeros(n, np.int64)  # async calls on the way up
        above = np.full((n, int(depth.max()) + 1), -1, np.int64)
        for d in range(1, int(depth.max()) + 1):
            level = np.flatnonzero(depth == d)
            parent = self.parent[level]
            above[level] = above[parent]
            crossed[level] = crossed[parent] + self.is_async[level]
            hop = level[self.is_async[level]]
            above[hop, crossed[hop] - 1] = self.parent[hop]
        width = int(crossed.max())
        return np.column_stack([np.arange(n), above[:, :width]])

    def log_density(self, own_ms: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """log p of own times ``own_ms`` of spans ``rows`` (a client's is its network time plus the call overhead)."""
        f = (own_ms - np.where(self.is_client[rows], CALL_OVERHEAD_MS, 0.0)) / self.scale[rows]
        out = np.full(f.shape, -700.0)
        server, client = (f > 0) & ~self.is_client[rows], (f > 0) & self.is_client[rows]
        out[server] = np.interp(np.log(f[server]), self.log_f, self.log_p, left=-700, right=-700)
        log_c = np.log(f[client])
        out[client] = -log_c**2 / (2 * NETWORK_SIGMA**2) - np.log(NETWORK_SIGMA * np.sqrt(2 * np.pi)) - log_c
        return out

    def span_ratios(self, own_ms: np.ndarray, duration: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Per span of ``rows`` (non-root): p(own times had it been slowed) / p(own times as they are)."""
        changed = self.changed[rows]
        valid = changed >= 0
        index = np.where(valid, changed, 0)
        observed = own_ms[index]
        original = observed - ((1 - 1 / FACTOR) * duration[rows])[:, None]
        log_ratio = np.where(valid, self.log_density(original, index) - self.log_density(observed, index), 0.0)
        return np.where((valid & (original <= 0)).any(axis=1), 0.0, np.exp(log_ratio.sum(axis=1)))

    def likelihood_ratios(self, own_ms: np.ndarray, duration: np.ndarray, traces: np.ndarray) -> np.ndarray:
        """Each trace's likelihood ratio: the mean of its non-root spans' ratios."""
        rows = np.flatnonzero(np.isin(self.request, traces) & (self.parent >= 0))
        ratios = self.span_ratios(own_ms, duration, rows)
        return pd.Series(ratios).groupby(self.request[rows]).mean().reindex(traces).to_numpy()

    def slowed(self, span: int) -> tuple[np.ndarray, np.ndarray]:
        """Own times and durations after ``span`` took FACTOR x its duration."""
        own_ms, duration = self.own_ms.copy(), self.duration.copy()
        amount = (FACTOR - 1) * self.duration[span]
        own_ms[span] += amount
        node = span
        while node >= 0:
            duration[node] += amount
            up = self.parent[node]
            if up >= 0 and self.is_async[node]:
                own_ms[up] += amount
            node = up
        return own_ms, duration


def oracle_auc(seed: int) -> tuple[float, float, int, int]:
    """ROC AUC of the oracle's likelihood ratio; the same for server-span targets alone; traces."""
    spans = GeneratedSpans(seed)
    rng = np.random.default_rng(seed + 7)
    traces = np.unique(spans.request)
    later = np.unique(spans.request[spans.parent >= 0])  # traces with a span to slow
    later = later[later >= int(traces.size * 0.35)]
    normal = spans.likelihood_ratios(spans.own_ms, spans.duration, later)
    changed, client = [], []
    for trace in rng.choice(later, MUTATED, replace=False):
        rows = np.flatnonzero(spans.request == trace)
        target = int(rng.choice(rows[spans.parent[rows] >= 0]))
        changed.append(float(spans.likelihood_ratios(*spans.slowed(target), np.array([trace]))[0]))
        client.append(bool(spans.is_client[target]))
    changed, client = np.array(changed), np.array(client)
    both = roc_auc_score(np.r_[np.zeros(normal.size), np.ones(changed.size)], np.r_[normal, changed])
    server = roc_auc_score(np.r_[np.zeros(normal.size), np.ones((~client).sum())], np.r_[normal, changed[~client]])
    return both, server, normal.size, changed.size


def worst_own_time_z(seed: int) -> dict[str, float]:
    """ROC AUC per fault type of the largest robust z of log own time (the plain statistic)."""
    data = fault_sets(seed)

    def own_times(frame: pd.DataFrame) -> pd.DataFrame:
        spans = self_time_and_own_error(frame)
        key = spans["service_name"].astype(str) + " " + spans["span_name"].astype(str) + " " + spans["span_kind"].astype(str)
        return pd.DataFrame({"trace_id": spans["trace_id"].astype(str).to_numpy(), "key": key.to_numpy(),
                             "value": np.log(np.maximum(spans["self_ms"].to_numpy(), 1e-3))})

    train = own_times(data.train.traces)
    baseline = robust_baseline(train["value"], train["key"], rel_floor=0.0, abs_floor=0.05)  # 1.4826 MAD, at least 0.05

    def scores(frame: pd.DataFrame) -> np.ndarray:
        own = own_times(frame)
        z = (own["value"] - own["key"].map(baseline["median"])) / own["key"].map(baseline["sigma"])
        return z.fillna(0.0).groupby(own["trace_id"]).max().to_numpy()

    normal = scores(data.normal)
    out = {}
    for kind in KINDS:
        changed = scores(data.sets[kind])
        out[kind] = float(roc_auc_score(np.r_[np.zeros(normal.size), np.ones(changed.size)], np.r_[normal, changed]))
    return out


def ratio_against_rarity(multiples: tuple[float, ...] = (2, 3, 4, 5, 7, 10, 20, 50, 100)) -> pd.DataFrame:
    """Per own work of ``m`` times its service's base, its rarity (``-log`` of the share of calls
    at least that slow) and the oracle's log likelihood ratio that it is a 5x slow-down, under the
    generator's law. The ratio peaks near the body's edge and falls back in the Pareto tail,
    where a very slow call is explained by the tail: the oracle ranks a call 50x its base below
    one 4x, which only a test that knows the fault's size may do."""
    log_f, log_p = server_log_density()
    density_of_log = np.exp(log_p + log_f)
    survival = np.cumsum(density_of_log[::-1])[::-1] * (log_f[1] - log_f[0])
    at = np.searchsorted(log_f, np.log(multiples))
    before = np.searchsorted(log_f, np.log(multiples) - np.log(FACTOR))
    return pd.DataFrame({"times_base": multiples, "rarity_nats": -np.log(survival[at]),
                         "log_ratio_5x": np.log(density_of_log[before] / density_of_log[at])})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    args = parser.parse_args()
    plain = []
    print("| seed | oracle AUC | oracle, server-span targets | normal / changed traces |")
    print("|---|---|---|---|")
    for seed in [int(s) for s in args.seeds.split(",")]:
        both, server, n_normal, n_changed = oracle_auc(seed)
        print(f"| {seed} | {both:.4f} | {server:.4f} | {n_normal} / {n_changed} |", flush=True)
        plain.append(worst_own_time_z(seed))
    table = pd.DataFrame(plain)
    print("\nlargest robust z of log own time, per fault type: mean (min-max) over seeds")
    print("| " + " | ".join(KINDS) + " |\n|" + "---|" * len(KINDS))
    print("| " + " | ".join(f"{table[k].mean():.3f} ({table[k].min():.3f}-{table[k].max():.3f})" for k in KINDS) + " |")
    print("\nserver own work: rarity against the oracle's log likelihood ratio of a 5x slow-down")
    print(ratio_against_rarity().round(2).to_string(index=False))


if __name__ == "__main__":
    main()
