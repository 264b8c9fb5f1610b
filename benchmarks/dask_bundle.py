"""Write the scale-out benchmark's bundles: the large preset for one day, and N days of it (issue 29).

Usage: python benchmarks/dask_bundle.py OUT [--days 5] [--services 50] [--requests-per-minute 40]

One process cannot generate five days of the large preset at once (the generator's budget check
asks for ~25 GiB). So each day is generated on its own, all on one topology (the large preset's,
written once as YAML, since each day has its own seed), and the days' hive partitions are moved
into one bundle (`<frame>.parquet/date=.../service=...`), with every day's faults in `truth.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from melt.core.settings import SynthSettings
from synth.generate import generate
from synth.topology import random_topology


def topology_yaml(services: int, endpoints: int, seed: int, file: Path) -> Path:
    """The random topology of ``seed`` as the YAML `synth.topology_file` reads."""
    topo = random_topology(services, endpoints, np.random.default_rng(seed))
    endpoint_ref = [f"{topo.services[s]}.{name}" for s, name in zip(topo.endpoint_service, topo.endpoint_name, strict=True)]
    spec = {"services": {name: {"role": role, "latency_ms": float(base), "instances": int(n)}
                         for name, role, base, n in zip(topo.services, topo.roles, topo.base_latency_ms,
                                                        topo.instances, strict=True)},
            "calls": [{"from": endpoint_ref[a], "to": endpoint_ref[b], "prob": float(p), "async": bool(asy)}
                      for a, callees in enumerate(topo.calls) for b, p, asy in callees]}
    file.write_text(yaml.safe_dump(spec, sort_keys=False))
    return file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--requests-per-minute", type=float, default=40.0)
    parser.add_argument("--faults-per-day", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    topology = topology_yaml(args.services, 3, args.seed, out.parent / f"{out.name}-topology.yaml")
    faults = []
    for day in range(args.days):
        start = pd.Timestamp("2026-01-05", tz="UTC") + pd.Timedelta(days=day)
        config = SynthSettings.of(seed=args.seed + day, services=args.services, duration="24h",
                                  requests_per_minute=args.requests_per_minute, faults=args.faults_per_day,
                                  start=start.isoformat(), topology_file=str(topology),
                                  warmup_fraction=0.4 if day == 0 else 0.05)
        bundle = generate(config)
        day_dir = bundle.write(out.parent / f"{out.name}-day{day}", partitioned=True)
        for frame in day_dir.glob("*.parquet"):
            (out / frame.name).mkdir(exist_ok=True)
            for part in frame.glob("date=*"):
                shutil.move(str(part), out / frame.name / part.name)
        faults.extend(bundle.truth["faults"])
        shutil.rmtree(day_dir)
        print(f"day {day}: {bundle.summary()}", flush=True)
    (out / "truth.json").write_text(json.dumps({"faults": faults}, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
