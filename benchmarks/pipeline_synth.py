"""End-to-end pipeline on synthetic bundles: wall time, peak memory, and root-cause top-1 per fault.

Usage: python benchmarks/pipeline_synth.py [--seeds 1,2,3,4,5,7] [--faults 3] [--duration 2h] [--out /tmp/melt-bench]

For each seed: generate the default bundle, run `detect --models all`, and for every injected fault
check whether an incident overlapping its window ranks the true service first. This is a smoke
benchmark of the skeleton; the proper evaluation (`melt evaluate`, baselines, real data) is its own issue.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from melt.config import default_config
from melt.pipeline import detect
from synth.generate import SynthConfig, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3,4,5,7")
    parser.add_argument("--faults", type=int, default=3, help="faults per bundle (types cycle through all seven)")
    parser.add_argument("--duration", default="2h")
    parser.add_argument("--out", default=None, help="working directory (default: a temporary one)")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="melt-bench-"))
    rows, found, top1, total = [], 0, 0, 0
    for seed in [int(s) for s in args.seeds.split(",")]:
        began = time.perf_counter()
        bundle = generate(SynthConfig(seed=seed, faults=args.faults, duration=args.duration))
        bundle.write(root / f"data-{seed}")
        generated = time.perf_counter() - began
        began = time.perf_counter()
        result = detect(root / f"data-{seed}", "all", root / f"reports-{seed}", default_config(), quiet=True)
        detected = time.perf_counter() - began
        for fault in bundle.truth["faults"]:
            total += 1
            overlapping = [r for r in result.reports
                           if r["window"]["start"] < fault["end"] and r["window"]["end"] > fault["start"]]
            found += bool(overlapping)
            hit = any(r["service"] == fault["root_cause_service"] for r in overlapping)
            top1 += hit
            rows.append((seed, fault["type"], fault["root_cause_service"], len(overlapping),
                         overlapping[0]["service"] if overlapping else "-", "yes" if hit else "no"))
        print(f"seed {seed}: spans={len(bundle.traces)} logs={len(bundle.logs)} generate {generated:.2f}s "
              f"detect {detected:.2f}s incidents={len(result.reports)}", flush=True)
    print("\nseed  fault           true service        incidents  top-1 of first  hit")
    for seed, kind, service, n, first, hit in rows:
        print(f"{seed:<5} {kind:<15} {service:<19} {n:<10} {first:<15} {hit}")
    by_type: dict[str, list[bool]] = {}
    for _, kind, _, _, _, hit in rows:
        by_type.setdefault(kind, []).append(hit == "yes")
    print("\ntop-1 by fault type: " + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in by_type.items()))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nfaults found: {found}/{total}; top-1 correct: {top1}/{total}; peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
