"""Generation speed of `melt generate` on a large system, against a one-trace-at-a-time baseline.

Usage: python benchmarks/synth_speed.py [--services 50] [--duration 24h] [--requests-per-minute 40]
                                        [--out DIR] [--baseline-requests 5000]

Reports wall time, spans/s, log lines/s, peak RSS and the bundle's size on disk. The baseline
expands the same call-tree templates the obvious way, one request and one span at a time in
Python (pre-order walk, per-span random draws, durations summed bottom-up), and is compared with
the same stage in melt (``expand_requests`` + ``uncapped_durations``, all requests at once).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from melt.core.settings import SynthSettings
from synth.calls import uncapped_durations
from synth.generate import generate
from synth.topology import random_topology
from synth.workload import arrival_times, build_templates, expand_requests


def baseline_spans_per_second(services: int, n_requests: int, seed: int) -> float:
    """Per-request, per-span Python expansion of the same templates (the loop melt avoids)."""
    rng = np.random.default_rng(seed)
    topology = random_topology(services, 3, rng)
    templates = build_templates(topology)
    began = time.perf_counter()
    spans = 0
    for _ in range(n_requests):
        template = templates[int(rng.integers(len(templates)))]
        kept: dict[int, float] = {}
        for node in range(template.endpoint.size):  # pre-order: parents come first
            parent = int(template.parent[node])
            if (parent < 0 or parent in kept) and rng.random() < template.prob[node]:
                service = int(topology.endpoint_service[template.endpoint[node]])
                kept[node] = float(topology.base_latency_ms[service] * rng.lognormal(0.0, 0.45))
        for node in sorted(kept, reverse=True):  # durations bottom-up
            parent = int(template.parent[node])
            if parent in kept and not template.is_async[node]:
                kept[parent] += kept[node]
        spans += len(kept)
    return spans / (time.perf_counter() - began)


def vectorised_spans_per_second(services: int, n_requests: int, seed: int) -> float:
    """The same stage in melt: every request's span tree and durations at once."""
    rng = np.random.default_rng(seed)
    topology = random_topology(services, 3, rng)
    templates = build_templates(topology)
    times = arrival_times(pd.Timestamp("2026-01-05", tz="UTC"), 1440, n_requests / 1440, [], rng)
    began = time.perf_counter()
    spans = expand_requests(topology, templates, times, rng)
    uncapped_durations(spans)
    return spans.size / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--duration", default="24h")
    parser.add_argument("--requests-per-minute", type=float, default=40.0)
    parser.add_argument("--faults", type=int, default=14)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=None, help="where to write the bundle (default: a temporary directory, removed)")
    parser.add_argument("--baseline-requests", type=int, default=5000)
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="melt-synth-"))
    config = SynthSettings.of(seed=args.seed, services=args.services, duration=args.duration,
                         requests_per_minute=args.requests_per_minute, faults=args.faults, fault_duration="20m")
    began = time.perf_counter()
    bundle = generate(config)
    simulated = time.perf_counter() - began
    bundle.write(out / "bundle")
    total = time.perf_counter() - began
    size_mb = sum(p.stat().st_size for p in (out / "bundle").iterdir()) / 2**20
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    spans, logs, metrics = len(bundle.traces), len(bundle.logs), len(bundle.metrics)
    baseline = baseline_spans_per_second(args.services, args.baseline_requests, args.seed)
    vectorised = vectorised_spans_per_second(args.services, int(args.requests_per_minute * 1440), args.seed)
    print(f"config: services={args.services} duration={args.duration} rpm={args.requests_per_minute} faults={args.faults}")
    print(f"spans={spans} logs={logs} metric_points={metrics} events={len(bundle.events)}")
    print(f"simulate {simulated:.1f}s, simulate+write {total:.1f}s, peak RSS {peak_mb:.0f} MB, on disk {size_mb:.1f} MB")
    print(f"throughput (simulate+write): {spans / total:,.0f} spans/s, {logs / total:,.0f} log lines/s")
    print(f"span trees + durations: per-span Python loop {baseline:,.0f} spans/s, melt {vectorised:,.0f} spans/s "
          f"({vectorised / baseline:.1f}x)")
    if args.out is None:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
