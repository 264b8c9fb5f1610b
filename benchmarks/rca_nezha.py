"""Root-cause ranking on the 28 real TrainTicket faults of Nezha (FSE 2023), in two modes.

(a) window given, the usual protocol of RCA papers: for each fault, the detectors are fitted on a
    normal baseline (the fault-free ``construct_data`` logs and traces, the minute before the fault,
    and the hour of metrics before it), the fault window is scored and one incident is ranked.
(b) end to end: the detectors are fitted on the fault-free bundle only, melt finds the incidents
    over the whole day itself, then ranks them.

One config for every case; the fault list is used only to score (and, in mode (a), for the window
that the protocol gives). Both modes write reports and score them with ``melt evaluate``'s code.

    .venv/bin/python benchmarks/rca_nezha.py ../shared/data/nezha-trainticket --out out/rca_nezha
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from melt.bundle import MeltBundle  # noqa: E402
from melt.config import load_config  # noqa: E402
from melt.ensemble import window_incident  # noqa: E402
from melt.incident_evaluation import evaluate, format_table, read_truth  # noqa: E402
from melt.pipeline import detect, fit_detectors, report_incidents, score_all  # noqa: E402
from melt.sinks import make_sinks  # noqa: E402

MODELS = "zscore,log_patterns,span_latency"


def imported(source: Path, out: Path, subset: str) -> Path:
    """The Nezha data as a melt bundle (imported once, then reused)."""
    if not (out / "import.json").is_file():
        subprocess.run([str(ROOT / ".venv/bin/melt"), "import", "nezha", str(source), "--out", str(out),
                        "--subset", subset, "--force", "--quiet"], check=True)
    return out


def window_given(bundle: MeltBundle, normal: MeltBundle, config: dict, models: list[str], out: Path,
                 lead_in: pd.Timedelta, metric_history: pd.Timedelta) -> list[dict]:
    """Mode (a): one report per fault window, detectors fitted on that case's normal baseline."""
    reports, timings = [], []
    for fault in bundle.truth["faults"]:
        start, end = pd.Timestamp(fault["start"]), pd.Timestamp(fault["end"])
        before = bundle.slice_time(start - lead_in, start)
        metrics = bundle.metrics[(bundle.metrics["timestamp"] >= start - metric_history)
                                 & (bundle.metrics["timestamp"] < start)]
        baseline = MeltBundle(metrics=metrics, logs=normal.logs, traces=normal.traces, validate=False).union(
            MeltBundle(logs=before.logs, traces=before.traces, validate=False))
        fitted = fit_detectors(baseline, models, config, quiet=True)
        signal_of = {name: model.signal for name, model in fitted.items()}
        window = bundle.slice_time(start - lead_in, end)
        scores = score_all(fitted, window, quiet=True)
        incident = window_incident(scores, signal_of, start, end, float(config["ensemble"]["threshold"]))
        began = time.perf_counter()
        report = report_incidents([incident], scores, window, signal_of, config)[0]
        timings.append(time.perf_counter() - began)
        report["incident_id"] = f"CASE-{fault['id']}"
        reports.append(report)
        print(f"  {fault['id']} {fault['type']:<15} truth {fault['root_cause_service']:<30} "
              f"melt {[c['service'] for c in report['root_cause_analysis']['ranked_causes'][:3]]}", file=sys.stderr)
    for sink in make_sinks(["files"], out):
        sink.deliver(reports)
    print(f"ranking + report per incident: mean {1000 * sum(timings) / len(timings):.0f} ms", file=sys.stderr)
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the nezha-trainticket directory")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "rca_nezha")
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--modes", default="a,b")
    parser.add_argument("--lead-in", default="1min", help="mode (a): normal minutes just before each fault")
    parser.add_argument("--metric-history", default="1h", help="mode (a): metric history before each fault")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: not found (the Nezha data lives in ../shared/data/nezha-trainticket)")
    config = load_config(ROOT / "config.yaml")
    rca_dir = imported(args.data, ROOT / "data" / "nezha-rca", "rca")
    normal_dir = imported(args.data, ROOT / "data" / "nezha-normal", "normal")
    models = [m.strip() for m in args.models.split(",")]
    truth = read_truth(rca_dir / "truth.json")
    results = {}
    for mode in args.modes.split(","):
        out = args.out / mode
        shutil.rmtree(out, ignore_errors=True)
        began = time.perf_counter()
        if mode == "a":
            bundle, normal = MeltBundle.read(rca_dir), MeltBundle.read(normal_dir)
            reports = window_given(bundle, normal, config, models, out, pd.Timedelta(args.lead_in),
                                   pd.Timedelta(args.metric_history))
        else:
            reports = detect(rca_dir, ",".join(models), out, config, train_dir=normal_dir, quiet=True).reports
        result = evaluate(reports, truth, "1m")
        result["wall_s"] = round(time.perf_counter() - began, 1)
        results[mode] = result
        title = "(a) window given" if mode == "a" else "(b) end to end"
        print(f"\n== TrainTicket {title}: {result['wall_s']} s ==\n{format_table(result)}")
        missed = [c for c in result["cases"] if c["rank.melt"] != 1]
        print("not ranked first: " + ", ".join(f"{c['id'][-2:]} {c['type']} ({c['rank.melt'] or '-'})" for c in missed))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak:.0f} MB")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
