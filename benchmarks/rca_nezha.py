"""Root-cause ranking on the 28 real TrainTicket faults of Nezha (FSE 2023), in two modes.

(a) window given, the usual protocol of RCA papers: for each fault, the detectors are fitted on a
    normal baseline, the fault window is scored and one incident is ranked. The baseline is the
    fault-free ``construct_data`` logs and traces plus everything recorded in the ``--history`` before
    the fault starts: unlabelled, as a production history is, so it may hold earlier faults (the
    recordings of earlier cases) and also the same fault where it was on before its stated start.
    A longer history outvotes both; a short lead-in alone does not (docs/benchmarks.md).
    ``--history-signals metrics`` keeps the history's metrics only, so logs and traces are compared
    with ``construct_data`` alone, as Nezha does (the construct_data metric files hold the faults).
(b) end to end: melt finds the incidents over the whole day itself, then ranks them. With
    ``--retrain-every`` (default 10min; ``off`` fits once), the detectors are refitted every period
    on the fault-free bundle plus the ``detect.train_window`` (2h) before the period, as a deployed
    detector would be (:mod:`melt.rolling`); with ``off``, on the fault-free bundle only.

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
from melt.schema import SIGNALS  # noqa: E402
from melt.sinks import make_sinks  # noqa: E402

MODELS = "zscore,log_patterns,span_latency"


def imported(source: Path, out: Path, subset: str) -> Path:
    """The Nezha data as a melt bundle (imported once, then reused)."""
    if not (out / "import.json").is_file():
        subprocess.run([str(ROOT / ".venv/bin/melt"), "import", "nezha", str(source), "--out", str(out),
                        "--subset", subset, "--force", "--quiet"], check=True)
    return out


def without_metrics(normal_dir: Path, out: Path) -> Path:
    """The fault-free logs and traces alone: Nezha's ``construct_data`` metric files are the same 15 h
    series as the fault day's, faults included, so a baseline must not take them."""
    if not (out / "logs.parquet").is_file():
        normal = MeltBundle.read(normal_dir, signals=["logs", "traces"])
        MeltBundle(logs=normal.logs, traces=normal.traces, validate=False).write(out)
    return out


def window_given(bundle: MeltBundle, normal: MeltBundle, config: dict, models: list[str], out: Path,
                 lead_in: pd.Timedelta, history: pd.Timedelta, history_signals: list[str]) -> list[dict]:
    """Mode (a): one report per fault window, detectors fitted on that case's normal baseline."""
    reports, timings = [], []
    history_source = MeltBundle(**{name: getattr(bundle, name) for name in history_signals}, validate=False)
    for fault in bundle.truth["faults"]:
        start, end = pd.Timestamp(fault["start"]), pd.Timestamp(fault["end"])
        before = history_source.slice_time(start - history, start)
        baseline = MeltBundle(logs=normal.logs, traces=normal.traces, validate=False).union(before)
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
    parser.add_argument("--lead-in", default="1min", help="mode (a): minutes before each fault scored with it")
    parser.add_argument("--history", default="2h", help="mode (a): data before each fault added to the baseline")
    parser.add_argument("--history-signals", default=",".join(SIGNALS),
                        help="mode (a): the signals that the history adds to the baseline")
    parser.add_argument("--retrain-every", default="10min", help="mode (b): refit period, or 'off' to fit once")
    args = parser.parse_args()
    history_signals = [name.strip() for name in args.history_signals.split(",")]
    if unknown := sorted(set(history_signals) - set(SIGNALS)):
        sys.exit(f"--history-signals: unknown signal(s) {', '.join(unknown)} (known: {', '.join(SIGNALS)})")
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
            bundle, normal = MeltBundle.read(rca_dir), MeltBundle.read(normal_dir, signals=["logs", "traces"])
            reports = window_given(bundle, normal, config, models, out, pd.Timedelta(args.lead_in),
                                   pd.Timedelta(args.history), history_signals)
        else:
            every = None if args.retrain_every == "off" else args.retrain_every
            rolling = {**config, "detect": {**config["detect"], "retrain_every": every}}
            reference = without_metrics(normal_dir, ROOT / "data" / "nezha-normal-logs-traces") if every else normal_dir
            reports = detect(rca_dir, ",".join(models), out, rolling, train_dir=reference, quiet=True).reports
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
