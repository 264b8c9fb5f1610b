"""Scale-out on Dask: `melt detect --dask local:W` on partitioned bundles, 1 and 2 workers (issue 29).

Usage:
  python benchmarks/dask_scale.py BUNDLE [BUNDLE ...] [--workers 1,2] [--models LIST]
                                  [--memory-limit 10GiB] [--out DIR] [--project 8,32,128]

Each bundle is analysed once per worker count, in this process's LocalCluster of one-thread worker
processes. Per run: wall time, the peak RSS of each worker process (sampled every 0.2 s from
/proc through psutil) against the memory limit, and whether the reports equal the first run's
(same incidents and ranked causes, numbers within 1e-6). The projection for more workers is a
list schedule of the measured task times (fits first, then each detector's scoring parts, longest
first) plus the client's serial part (wall time minus the 1-worker run's task time): a projection
from this run's task graph, not a measurement.
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

DEFAULT_MODELS = "zscore,changepoint,iforest,log_templates,log_patterns,span_latency,gat_gae"


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


def makespan(tasks: list[dict], workers: int) -> float:
    """Greedy list schedule: fits first (all ready at once), then scoring parts, longest first."""
    loads = [0.0] * workers
    fit_end: dict[str, float] = {}
    for task in sorted((t for t in tasks if t["part"] == "fit"), key=lambda t: -t["seconds"]):
        slot = loads.index(min(loads))
        loads[slot] += task["seconds"]
        fit_end[task["detector"]] = loads[slot]
    for task in sorted((t for t in tasks if t["part"] != "fit"), key=lambda t: -t["seconds"]):
        slot = loads.index(min(loads))
        loads[slot] = max(loads[slot], fit_end.get(task["detector"], 0.0)) + task["seconds"]
    return max(loads)


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
    rows = []
    for bundle in args.bundles:
        first: Path | None = None
        serial = None
        for count in (int(w) for w in args.workers.split(",")):
            out = Path(args.out) / f"{Path(bundle).name}-w{count}"
            began = time.perf_counter()
            with WorkerMemory() as memory:
                result = detect(bundle, args.models, out, settings, quiet=True,
                                dask=f"local:{count}:{args.memory_limit}")
            wall = time.perf_counter() - began
            reports = reports_in(out)
            first = first or out
            task_time = sum(t["seconds"] for t in result.dask_tasks)
            if serial is None:
                serial = max(wall - task_time, 0.0)
            peaks = sorted(memory.peaks.values(), reverse=True)[:count]
            row = {"bundle": bundle, "workers": count, "wall_s": round(wall, 1), "task_s": round(task_time, 1),
                   "tasks": len(result.dask_tasks), "incidents": len(reports),
                   "same_reports": not compare_runs(first, out),
                   "peak_worker_mb": [round(p / 2**20) for p in peaks], "limit": args.memory_limit,
                   "projected_s": {w: round(serial + makespan(result.dask_tasks, w), 1)
                                   for w in [int(x) for x in args.project.split(",")]}}
            rows.append(row)
            (Path(args.out) / f"{Path(bundle).name}-w{count}-tasks.json").write_text(
                json.dumps(result.dask_tasks, indent=1) + "\n")
            print(json.dumps(row), flush=True)
    by_bundle: dict[str, dict[int, float]] = {}
    for row in rows:
        by_bundle.setdefault(row["bundle"], {})[row["workers"]] = row["wall_s"]
    for bundle, walls in by_bundle.items():
        if 1 in walls and 2 in walls:
            print(f"{bundle}: 2 workers {walls[1] / walls[2]:.2f}x faster than 1")


if __name__ == "__main__":
    main()
