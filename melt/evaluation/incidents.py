"""Score incident reports against ground truth: detection and root-cause ranking.

Detection is incident-level: a report is a true positive when its window overlaps a fault window
(widened by ``tolerance``); a fault is found when any report overlaps it. Time to detect is the
first overlapping report's start minus the fault's start. Ranking follows the RCA literature
(Nezha, MicroRCA, RCAEval): AC@k is the share of faults whose true service is in the top k of the
report matched to the fault (a fault no report found counts as a miss), Avg@5 is the mean of AC@1
to AC@5, and MRR the mean reciprocal rank. The same figures are computed for the baseline rankings
each report carries, so that melt's gains are measured against them in the same run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melt.core.errors import BundleError

TOP_K = (1, 3, 5)


def read_reports(directory: str | Path) -> list[dict[str, Any]]:
    """Every incident report (``*.json`` but ``index.json``) in ``directory``."""
    root = Path(directory)
    if not root.is_dir():
        raise BundleError(f"{root}: reports directory not found")
    reports = []
    for file in sorted(root.glob("*.json")):
        if file.name == "index.json":
            continue
        try:
            report = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleError(f"{file}: not a JSON report ({exc})") from exc
        if not isinstance(report, dict) or "window" not in report or "root_cause_analysis" not in report:
            raise BundleError(f"{file}: not a melt incident report (no 'window' or 'root_cause_analysis')")
        reports.append(report)
    return reports


def read_truth(file: str | Path) -> pd.DataFrame:
    """The faults of a ``truth.json``: id, type, root-cause service, start and end (UTC)."""
    path = Path(file)
    try:
        truth = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: cannot read ground truth ({exc})") from exc
    faults = truth.get("faults") if isinstance(truth, dict) else None
    if not faults:
        raise BundleError(f"{path}: no 'faults' list")
    frame = pd.DataFrame(faults)
    missing = [c for c in ("id", "type", "root_cause_service", "start", "end") if c not in frame.columns]
    if missing:
        raise BundleError(f"{path}: faults lack the field '{missing[0]}'")
    frame["start"] = pd.to_datetime(frame["start"], utc=True)
    frame["end"] = pd.to_datetime(frame["end"], utc=True)
    return frame


def _ranking(report: dict[str, Any], method: str) -> list[str]:
    analysis = report["root_cause_analysis"]
    if method == "melt":
        return [c["service"] for c in analysis.get("ranked_causes", [])]
    return list(analysis.get("baselines", {}).get(method, []))


def match(reports: list[dict[str, Any]], faults: pd.DataFrame, tolerance: pd.Timedelta) -> pd.DataFrame:
    """Report-fault pairs whose windows overlap (after widening the fault by ``tolerance``), with the overlap."""
    if not reports:
        return pd.DataFrame(columns=["report", "fault", "overlap", "start"])
    def ns(values: Any) -> np.ndarray:
        return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).as_unit("ns").asi8

    starts, ends = ns([r["window"]["start"] for r in reports]), ns([r["window"]["end"] for r in reports])
    low, high = ns(faults["start"] - tolerance), ns(faults["end"] + tolerance)
    overlap = np.minimum(ends[:, None], high[None, :]) - np.maximum(starts[:, None], low[None, :])
    report_index, fault_index = np.nonzero(overlap > 0)
    return pd.DataFrame({"report": report_index, "fault": fault_index, "overlap": overlap[report_index, fault_index],
                         "start": pd.to_datetime(starts[report_index], utc=True)})


def rank_metrics(ranks: pd.Series) -> dict[str, float]:
    """AC@1/3/5, Avg@5 and MRR from 1-based ranks (NaN = not ranked)."""
    values = ranks.to_numpy(dtype=float)
    if values.size == 0:
        return {"AC@1": 0.0, "AC@3": 0.0, "AC@5": 0.0, "Avg@5": 0.0, "MRR": 0.0}
    ac = {k: float(np.mean(np.nan_to_num(values, nan=np.inf) <= k)) for k in range(1, 6)}
    return {"AC@1": ac[1], "AC@3": ac[3], "AC@5": ac[5], "Avg@5": float(np.mean(list(ac.values()))),
            "MRR": float(np.mean(np.nan_to_num(1.0 / values, nan=0.0)))}


DEFAULT_TOLERANCE = pd.Timedelta("5min")


def evaluate(reports: list[dict[str, Any]], faults: pd.DataFrame,
             tolerance: pd.Timedelta = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Detection and ranking figures, overall, per fault type and per case, for melt and each baseline."""
    pairs = match(reports, faults, tolerance)
    true_reports = pairs["report"].nunique()
    found = pairs["fault"].nunique()
    precision = true_reports / len(reports) if reports else 0.0
    recall = found / len(faults)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    # each fault's report: the one overlapping it most (the earliest among equals)
    best = pairs.sort_values(["fault", "overlap", "start"], ascending=[True, False, True]).drop_duplicates("fault")
    first = pairs.sort_values("start").drop_duplicates("fault").set_index("fault")["start"]
    onset = faults["start"].iloc[first.index.to_numpy()].reset_index(drop=True)
    detect_s = (pd.Series(pd.to_datetime(first.to_numpy(), utc=True)) - onset).dt.total_seconds().to_numpy()
    methods = ["melt"] + sorted({m for r in reports for m in r["root_cause_analysis"].get("baselines", {})})
    cases = faults[["id", "type", "root_cause_service"]].copy()
    cases["report"] = cases.index.map(best.set_index("fault")["report"]).astype("Int64")
    for method in methods:
        ranks = []
        for fault_number, report_number in zip(cases.index, cases["report"], strict=True):
            ranking = [] if pd.isna(report_number) else _ranking(reports[int(report_number)], method)
            truth = faults.at[fault_number, "root_cause_service"]
            ranks.append(ranking.index(truth) + 1 if truth in ranking else np.nan)
        cases[f"rank.{method}"] = ranks
    per_type = {
        kind: {m: rank_metrics(group[f"rank.{m}"]) | {"cases": len(group)} for m in methods}
        for kind, group in cases.groupby("type", sort=True)
    }
    return {
        "detection": {"reports": len(reports), "true_reports": int(true_reports), "faults": len(faults),
                      "found": int(found), "precision": precision, "recall": recall, "f1": f1,
                      "time_to_detect_s": {"mean": float(np.mean(detect_s)) if len(detect_s) else None,
                                           "median": float(np.median(detect_s)) if len(detect_s) else None},
                      "missed": faults.loc[~faults.index.isin(pairs["fault"]), "id"].tolist()},
        "ranking": {m: rank_metrics(cases[f"rank.{m}"]) for m in methods},
        "per_type": per_type,
        "cases": [{k: (None if pd.isna(v) else v) for k, v in row.items()}
                  for row in cases.drop(columns="report").to_dict("records")],
    }


def format_table(result: dict[str, Any]) -> str:
    """The human-readable summary ``melt evaluate`` prints."""
    d = result["detection"]
    ttd = d["time_to_detect_s"]["median"]
    lines = [f"incidents: {d['reports']} reports, {d['true_reports']} on a fault; faults found {d['found']}/{d['faults']}; "
             f"precision {d['precision']:.2f} recall {d['recall']:.2f} F1 {d['f1']:.2f}; "
             f"median time to detect {'-' if ttd is None else f'{ttd:.0f} s'}", ""]
    header = f"{'scope':<22}{'method':<13}{'cases':>6}{'AC@1':>7}{'AC@3':>7}{'AC@5':>7}{'Avg@5':>7}{'MRR':>7}"
    lines += [header, "-" * len(header)]
    scopes = [("all", {m: v | {"cases": d["faults"]} for m, v in result["ranking"].items()})]
    scopes += sorted(result["per_type"].items())
    for scope, methods in scopes:
        for method, m in methods.items():
            lines.append(f"{scope:<22}{method:<13}{m['cases']:>6}{m['AC@1']:>7.3f}{m['AC@3']:>7.3f}{m['AC@5']:>7.3f}"
                         f"{m['Avg@5']:>7.3f}{m['MRR']:>7.3f}")
    return "\n".join(lines)
