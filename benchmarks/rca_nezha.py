"""Root-cause ranking on the real Nezha fault data (FSE 2023), on every system given, in two modes.

Each DATA argument is a Nezha artifact directory: ``../shared/data/nezha-trainticket`` (TrainTicket,
28 faults) or the unpacked ``data/real/nezha-onlineboutique`` (OnlineBoutique, 56 faults over two
days). One config serves every system; the fault list is used only to score (and, in mode (a), for
the window that the protocol gives).

(a) window given, the usual protocol of RCA papers: for each fault, the detectors are fitted on a
    normal baseline, the fault window is scored and one incident is ranked. The baseline is the
    fault-free ``construct_data`` logs and traces plus everything recorded in the ``--history`` before
    the fault starts: unlabelled, as a production history is, so it may hold earlier faults (the
    recordings of earlier cases) and also the same fault where it was on before its stated start.
    ``--history-signals metrics`` keeps the history's metrics only, so logs and traces are compared
    with ``construct_data`` alone, as Nezha does (the construct_data metric files hold the faults).
(b) end to end: melt finds the incidents over the whole recording itself, then ranks them. With
    ``--retrain-every`` (default 10min; ``off`` fits once), the detectors are refitted every period
    on the fault-free bundle plus the ``detect.train_window`` (2h) before the period, as a deployed
    detector would be (:mod:`melt.pipeline.rolling`); with ``off``, on the fault-free bundle only.

A detector whose signal has too little training data for a case (OnlineBoutique has logs for 3
minutes of its 56 faults) is left out of that case, and the others go on. Imports are cached under
``data/nezha-cache/``, keyed by the source directory, the subset and the importer settings, so a
different source is never reused; ``--reimport`` imports again. Both modes write reports and score
them with ``melt evaluate``'s code: overall, per fault type, and for the baselines of the same run.

    .venv/bin/python benchmarks/rca_nezha.py ../shared/data/nezha-trainticket data/real/nezha-onlineboutique
"""

from __future__ import annotations

import argparse
import hashlib
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

from melt.core.bundle import MeltBundle  # noqa: E402
from melt.core.config import load_settings  # noqa: E402
from melt.core.schema import SIGNALS  # noqa: E402
from melt.core.settings import Settings  # noqa: E402
from melt.delivery.sinks import make_sinks  # noqa: E402
from melt.evaluation.incidents import evaluate, format_table, read_truth  # noqa: E402
from melt.incidents.ensemble import window_incident  # noqa: E402
from melt.pipeline.batch import detect, report_incidents  # noqa: E402
from melt.pipeline.fitting import fit_detectors, score_all  # noqa: E402

MODELS = "zscore,log_patterns,span_latency,call_edges,call_metrics,call_patterns"
CACHE = ROOT / "data" / "nezha-cache"


def system_name(source: Path) -> str:
    """``trainticket`` or ``onlineboutique`` from ``nezha-<system>``; the directory name otherwise."""
    return source.resolve().name.removeprefix("nezha-")


def imported(source: Path, subset: str, settings: Settings, again: bool) -> Path:
    """The Nezha data as a melt bundle, imported once per (source, subset, importer settings)."""
    chosen = {**settings.raw["import"]["nezha"], "subset": subset}
    key = json.dumps({"source": str(source.resolve()), **chosen}, sort_keys=True)
    out = CACHE / f"{system_name(source)}-{subset}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    record = out / "import.json"
    if again or not record.is_file() or json.loads(record.read_text()).get("source") != str(source.resolve()):
        subprocess.run([str(ROOT / ".venv/bin/melt"), "import", "nezha", str(source.resolve()), "--out", str(out),
                        "--subset", subset, "--force", "--quiet"], check=True)
    return out


def logs_and_traces(normal_dir: Path) -> Path:
    """The fault-free logs and traces alone: Nezha's ``construct_data`` metric files are the same
    series as the fault days', faults included, so a baseline must not take them."""
    out = normal_dir.with_name(normal_dir.name + "-logs-traces")
    if not (out / "import.json").is_file() or (out / "import.json").stat().st_mtime < (normal_dir / "import.json").stat().st_mtime:
        normal = MeltBundle.read(normal_dir, signals=["logs", "traces"])
        shutil.rmtree(out, ignore_errors=True)
        MeltBundle(logs=normal.logs, traces=normal.traces, validate=False).write(out)
        shutil.copy(normal_dir / "import.json", out / "import.json")
    return out


def window_given(bundle: MeltBundle, normal: MeltBundle, settings: Settings, models: list[str], out: Path,
                 lead_in: pd.Timedelta, history: pd.Timedelta, history_signals: list[str],
                 faults: list[dict]) -> list[dict]:
    """Mode (a): one report per fault window, detectors fitted on that case's normal baseline."""
    reports, timings = [], []
    history_source = MeltBundle(**{name: getattr(bundle, name) for name in history_signals}, validate=False)
    for fault in faults:
        start, end = pd.Timestamp(fault["start"]), pd.Timestamp(fault["end"])
        before = history_source.slice_time(start - history, start)
        baseline = MeltBundle(logs=normal.logs, traces=normal.traces, validate=False).union(before)
        window = bundle.slice_time(start - lead_in, end)
        usable = [name for name in models if _has(window, name)]
        skipped: list[str] = []
        fitted = fit_detectors(baseline, usable, settings, quiet=True, skipped=skipped)
        signal_of = {name: model.signal for name, model in fitted.items()}
        scores = score_all(fitted, window, quiet=True)
        incident = window_incident(scores, signal_of, start, end, settings.ensemble.threshold)
        began = time.perf_counter()
        report = report_incidents([incident], scores, window, signal_of, settings)[0]
        timings.append(time.perf_counter() - began)
        report["incident_id"] = f"CASE-{fault['id']}"
        reports.append(report)
        ranked = [c["service"] for c in report["root_cause_analysis"]["ranked_causes"][:3]]
        print(f"  {fault['id']} {fault['type']:<15} truth {fault['root_cause_service']:<24} melt {ranked}"
              f"  [{','.join(fitted)}]", file=sys.stderr)
    for sink in make_sinks(["files"], out):
        sink.deliver(reports)
    print(f"ranking + report per incident: mean {1000 * sum(timings) / len(timings):.0f} ms", file=sys.stderr)
    return reports


def _has(bundle: MeltBundle, name: str) -> bool:
    """Whether ``bundle`` holds rows of the signal detector ``name`` reads."""
    from melt.core.registry import get_plugin

    frame = getattr(bundle, get_plugin(name).signal)
    return frame is not None and len(frame) > 0


def run_system(source: Path, args: argparse.Namespace, settings: Settings, models: list[str],
               history_signals: list[str]) -> dict:
    """Both modes on one Nezha system; returns the evaluation per mode."""
    name = system_name(source)
    rca_dir = imported(source, "rca", settings, args.reimport)
    normal_dir = imported(source, "normal", settings, args.reimport)
    truth = read_truth(rca_dir / "truth.json")
    if args.cases:
        truth = truth[truth["id"].str.contains(args.cases)].reset_index(drop=True)
    results = {}
    for mode in args.modes.split(","):
        out = args.out / name / mode
        shutil.rmtree(out, ignore_errors=True)
        began = time.perf_counter()
        if mode == "a":
            bundle, normal = MeltBundle.read(rca_dir), MeltBundle.read(logs_and_traces(normal_dir))
            faults = [f for f in bundle.truth["faults"] if f["id"] in set(truth["id"])]
            reports = window_given(bundle, normal, settings, models, out, pd.Timedelta(args.lead_in),
                                   pd.Timedelta(args.history), history_signals, faults)
        else:
            every = None if args.retrain_every == "off" else args.retrain_every
            rolling = settings.with_overrides({"detect.retrain_every": every}, "--retrain-every")
            reference = logs_and_traces(normal_dir) if every else normal_dir
            reports = detect(rca_dir, ",".join(models), out, rolling, train_dir=reference, quiet=True).reports
        result = evaluate(reports, truth, pd.Timedelta("1min"))
        result["wall_s"] = round(time.perf_counter() - began, 1)
        results[mode] = result
        title = "(a) window given" if mode == "a" else "(b) end to end"
        print(f"\n== {name} {title}: {result['wall_s']} s ==\n{format_table(result)}")
        missed = [c for c in result["cases"] if c["rank.melt"] != 1]
        print("not ranked first: " + ", ".join(f"{c['id']} {c['type']} ({c['rank.melt'] or '-'})" for c in missed))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, nargs="+", help="Nezha system directories (nezha-trainticket, ...)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "rca_nezha")
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--modes", default="a,b")
    parser.add_argument("--lead-in", default="1min", help="mode (a): minutes before each fault scored with it")
    parser.add_argument("--history", default="2h", help="mode (a): data before each fault added to the baseline")
    parser.add_argument("--history-signals", default=",".join(SIGNALS),
                        help="mode (a): the signals that the history adds to the baseline")
    parser.add_argument("--retrain-every", default="10min", help="mode (b): refit period, or 'off' to fit once")
    parser.add_argument("--reimport", action="store_true", help="import again even where a cached import exists")
    parser.add_argument("--cases", default=None, help="a regex: only the faults whose id matches (for a quick look)")
    args = parser.parse_args()
    history_signals = [name.strip() for name in args.history_signals.split(",")]
    if unknown := sorted(set(history_signals) - set(SIGNALS)):
        sys.exit(f"--history-signals: unknown signal(s) {', '.join(unknown)} (known: {', '.join(SIGNALS)})")
    for source in args.data:
        if not source.is_dir():
            sys.exit(f"{source}: not found (the Nezha data lives in ../shared/data/nezha-trainticket; "
                     "OnlineBoutique unpacks from ../shared/data/nezha-onlineboutique, see its README)")
    settings = load_settings(ROOT / "config.yaml")
    models = [m.strip() for m in args.models.split(",")]
    results = {system_name(source): run_system(source, args, settings, models, history_signals) for source in args.data}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak:.0f} MB")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
