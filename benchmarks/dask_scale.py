"""Scale-out on Dask: `melt detect --dask local:W` on partitioned bundles, 1 and 2 workers (issue 29).

Usage:
  python benchmarks/dask_scale.py BUNDLE [BUNDLE ...] [--workers 1,2] [--models LIST]
                                  [--memory-limit 10GiB] [--out DIR] [--project 8,32,128]

Each bundle is analysed once per worker count, in this process's LocalCluster of one-thread worker
processes. Per run: wall time, the peak RSS of each worker process (sampled every 0.2 s from
/proc through psutil) against the memory limit, and whether the reports equal the first run's
(same incidents and ranked causes, numbers within 1e-6). The projection for more workers is the
client's serial part (the first run's wall time less its tasks' time per worker) plus Brent's
bounds on the measured task graph (:func:`bounds`): a projection, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import psutil

from melt.core.config import load_settings
from melt.evaluation.same_reports import compare_runs, reports_in
from melt.pipeline.batch import detect

DEFAULT_MODELS = "zscore,iforest,log_templates,span_latency,gat_gae"  # every kind of part: service, trace shard, fit by parts


class WorkerMemory:
    """Peak RSS of every child process (the cluster's nannies and workers) while running."""

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for child in me.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                except psutil.Error:
                    continue
                self.peaks[child.pid] = max(self.peaks.get(child.pid, 0), rss)
            time.sleep(0.2)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def bounds(tasks: list[dict], workers: int) -> tuple[float, float]:
    """Brent's bounds on the task graph's time on ``workers``: max(T1/W, Tinf) <= T_W <= T1/W + Tinf,
    with T1 the sum of the task times and Tinf the longest chain (a detector's fit, its rounds one
    after another with their longest part each, then its longest scoring part)."""
    total = sum(t["seconds"] for t in tasks)
    chains: dict[str, float] = {}
    rounds: dict[tuple[str, str], float] = {}
    scoring: dict[str, float] = {}
    for task in tasks:
        name, part, seconds = task["detector"], task["part"], task["seconds"]
        if part == "fit":
            chains[name] = chains.get(name, 0.0) + seconds
        elif part.startswith("fit-round-"):
            rounds[(name, part)] = max(rounds.get((name, part), 0.0), seconds)
        else:
            scoring[name] = max(scoring.get(name, 0.0), seconds)
    for (name, _), seconds in rounds.items():
        chains[name] = chains.get(name, 0.0) + seconds
    longest = max((chains.get(n, 0.0) + scoring.get(n, 0.0) for n in set(chains) | set(scoring)), default=0.0)
    return max(total / workers, longest), total / workers + longest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--memory-limit", default="10GiB")
    parser.add_argument("--out", default="out/dask_scale")
    parser.add_argument("--project", default="8,32,128")
    args = parser.parse_args()
    settings = load_settings(None)
    projected = [int(x) for x in args.project.split(",")]
    for bundle in args.bundles:
        first: Path | None = None
        walls: dict[int, float] = {}
        for count in (int(w) for w in args.workers.split(",")):
            out = Path(args.out) / f"{Path(bundle).name}-w{count}"
            began = time.perf_counter()
            with WorkerMemory() as memory:
                result = detect(bundle, args.models, out, settings, quiet=True,
                                dask=f"local:{count}:{args.memory_limit}")
            wall = walls[count] = time.perf_counter() - began
            first = first or out
            task_time = sum(t["seconds"] for t in result.dask_tasks)
            peaks = sorted(memory.peaks.values(), reverse=True)[:count]  # the workers, not their nannies
            row = {"bundle": bundle, "workers": count, "wall_s": round(wall, 1), "task_s": round(task_time, 1),
                   "tasks": len(result.dask_tasks), "incidents": len(reports_in(out)),
                   "same_reports_as_first": not compare_runs(first, out),
                   "peak_worker_mb": [round(p / 2**20) for p in peaks], "limit": args.memory_limit}
            if count == 1:  # what is not task time in a one-worker run is the client's serial part
                serial = max(wall - task_time, 0.0)
                row["serial_s"] = round(serial, 1)
                row["projected_s (Brent bounds)"] = {w: [round(serial + b, 1) for b in bounds(result.dask_tasks, w)]
                                                     for w in projected}
            (Path(args.out) / f"{Path(bundle).name}-w{count}-tasks.json").write_text(
                json.dumps(result.dask_tasks, indent=1) + "\n")
            print(json.dumps(row), flush=True)
        if 1 in walls and 2 in walls:
            print(f"{bundle}: 2 workers {walls[1] / walls[2]:.2f}x faster than 1", flush=True)

if __name__ == "__main__":
    main()
