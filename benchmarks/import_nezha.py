"""Import speed and memory on the real Nezha TrainTicket data.

Usage: python benchmarks/import_nezha.py DATA_DIR

DATA_DIR is ``nezha-trainticket`` (the Nezha layout). The import runs as a child process, as
``melt import nezha DATA_DIR --out DIR`` would, and the script reports its wall time, rows per
second per signal and peak resident memory (``wait4``), next to the size of the CSV input.

Baseline, measured in the same run and also as a child process: the obvious converter a user
writes first - ``pandas.read_csv`` of every file into memory, ``json.loads`` on every Docker
record, a Python ``re`` per line for the level, ``DataFrame.melt`` for the metrics, one
``MeltBundle.write``. Both must give the same row counts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from melt.importers.nezha import date_directories  # noqa: E402

LEVEL = re.compile(r"^\S+\s+(TRACE|DEBUG|INFO|WARN|ERROR|FATAL)\s+(.*)$", re.DOTALL)


def run_child(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MiB and stdout of a child process."""
    began = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as child:
        output = child.stdout.read() if child.stdout else ""
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {child.returncode}")
    return time.perf_counter() - began, usage.ru_maxrss / 1024, output


def input_bytes(dates: list[Path]) -> int:
    return sum(f.stat().st_size for d in dates for part in ("trace", "log", "metric") for f in (d / part).glob("*.csv"))


def naive_import(data: Path, out: Path) -> None:
    """The obvious converter: everything in memory at once, a Python loop for the nested JSON."""
    from melt.core.bundle import MeltBundle

    date = date_directories(data)[0]
    spans = pd.concat([pd.read_csv(f, on_bad_lines="skip", dtype=str) for f in sorted((date / "trace").glob("*.csv"))])
    spans = spans.drop_duplicates(["TraceID", "SpanID"])
    traces = pd.DataFrame({
        "trace_id": spans["TraceID"], "span_id": spans["SpanID"], "parent_span_id": spans["ParentID"],
        "span_name": spans["OperationName"], "service_name": spans["PodName"].str.replace(r"-[^-]+-[^-]+$", "", regex=True),
        "start_time": pd.to_datetime(spans["StartTimeUnixNano"].astype("int64"), utc=True),
        "duration": spans["Duration"].astype(float) / 1e3, "attr.k8s.pod.name": spans["PodName"]})
    raw = pd.concat([pd.read_csv(f, on_bad_lines="skip", dtype=str) for f in sorted((date / "log").glob("*.csv"))])
    rows = []
    for stamp, fallback, pod, trace, span, record in raw[["TimeUnixNano", "Timestamp", "PodName", "TraceID", "SpanID",
                                                          "Log"]].itertuples(index=False):
        try:
            line = json.loads(record)["log"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        match = LEVEL.match(line)
        level, message = (match.group(1), match.group(2).rstrip("\n")) if match else ("INFO", line.rstrip("\n"))
        when = pd.Timestamp(int(stamp), tz="UTC") if int(stamp) > 0 else pd.Timestamp(fallback, tz="UTC")
        rows.append((when, pod, level, message, trace, span))
    logs = pd.DataFrame(rows, columns=["timestamp", "instance", "level", "message", "trace_id", "span_id"])
    logs["service"] = logs["instance"].str.replace(r"-[^-]+-[^-]+$", "", regex=True)
    wide = []
    for file in sorted((date / "metric").glob("*.csv")):
        table = pd.read_csv(file)
        instance = table.pop("PodName") if "PodName" in table else table.pop("ServiceName").str.lower()
        table = table.drop(columns=["Time"]).assign(instance=instance)
        wide.append(table.melt(id_vars=["TimeStamp", "instance"], var_name="metric", value_name="value"))
    metrics = pd.concat(wide, ignore_index=True)
    metrics["timestamp"] = pd.to_datetime(metrics.pop("TimeStamp"), unit="s", utc=True)
    metrics["service"] = metrics["instance"].str.replace(r"-[^-]+-[^-]+$", "", regex=True)
    MeltBundle(metrics=metrics, logs=logs, traces=traces).write(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="bundle directory (default: a temporary one)")
    parser.add_argument("--naive", action="store_true", help="run only the plain converter into --out")
    args = parser.parse_args()
    if args.naive:
        naive_import(args.data, args.out)
        return
    dates = date_directories(args.data)
    size = input_bytes(dates)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "tt"
        wall, peak, _ = run_child([sys.executable, "-m", "melt.cli", "import", "nezha", str(args.data),
                                   "--out", str(out), "--force", "--quiet"])
        record = json.loads((out / "import.json").read_text())
        bundle_bytes = sum(f.stat().st_size for f in out.glob("*.parquet"))
    rows = record["rows"]
    print(f"melt import nezha {args.data}: {len(dates)} date(s), {size / 2**20:.0f} MiB of CSV in")
    print(f"  wall {wall:.1f} s, peak RSS {peak:.0f} MiB ({peak / (size / 2**20):.2f}x the input), "
          f"bundle {bundle_bytes / 2**20:.0f} MiB")
    for signal in ("traces", "logs", "metrics"):
        print(f"  {signal:8s} {rows.get(signal, 0):>9,} rows  {rows.get(signal, 0) / wall:>9,.0f} rows/s over the whole import")
    print(f"  bad rows {record['bad_rows']}, duplicate spans {record['duplicate_spans']}")

    with tempfile.TemporaryDirectory() as scratch:
        plain_wall, plain_peak, _ = run_child([sys.executable, __file__, "--naive", str(args.data),
                                               "--out", str(Path(scratch) / "naive")])
        plain_rows = {name: len(pd.read_parquet(Path(scratch) / "naive" / f"{name}.parquet", columns=[column]))
                      for name, column in (("traces", "span_id"), ("logs", "level"), ("metrics", "value"))}
    print(f"plain in-memory converter: wall {plain_wall:.1f} s, peak RSS {plain_peak:.0f} MiB; "
          f"melt is {plain_wall / wall:.2f}x its speed with {plain_peak / peak:.2f}x less peak memory; "
          f"same row counts: {all(plain_rows[k] == rows[k] for k in plain_rows)} {plain_rows}")

if __name__ == "__main__":
    main()
