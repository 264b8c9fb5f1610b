"""How each injected fault shows in each signal: before/during ratios for the root cause and its callers.

Usage: python benchmarks/synth_signals.py DATA_DIR  (a bundle written by `melt generate`)

Prints one markdown row per fault: p95 span duration and error share of the root cause and of its
callers (during the fault / before the first fault), error log lines in the fault window vs the
same length of fault-free time, and the metric that moved most on the root cause (its pod, for
pod faults). docs/synth.md shows a run of it.
"""

from __future__ import annotations

import sys

import pandas as pd

from melt.core.bundle import MeltBundle


def ratio(during: float, before: float) -> str:
    return f"{during / before:.1f}x" if before > 0 else ("-" if during == 0 else "new")


def fault_rows(bundle: MeltBundle) -> list[str]:
    spans, logs, metrics = bundle.frame("traces"), bundle.frame("logs"), bundle.frame("metrics")
    edges = bundle.truth["generator"]["edges"]
    rows = ["| fault | type | root cause | p95 root | p95 callers | errors root | errors callers | error logs root+callers | top metric (root) |",
            "|---|---|---|---|---|---|---|---|---|"]
    first = min(pd.Timestamp(f["start"]) for f in bundle.truth["faults"])  # the fault-free baseline ends here
    for fault in bundle.truth["faults"]:
        start, end = pd.Timestamp(fault["start"]), pd.Timestamp(fault["end"])
        root = fault["root_cause_service"]
        callers = sorted({a for a, b in edges if b == root} & set(fault["affected_services"]))

        def window(frame: pd.DataFrame, column: str, before: bool, start=start, end=end) -> pd.DataFrame:
            t = frame[column]
            return frame[t < first] if before else frame[(t >= start) & (t < end)]

        cells = []
        for who in ([root], callers):
            b, d = window(spans, "start_time", True), window(spans, "start_time", False)
            b, d = b[b["service_name"].isin(who)], d[d["service_name"].isin(who)]
            cells.append((ratio(d["duration"].quantile(0.95), b["duration"].quantile(0.95)) if len(d) and len(b) else "-",
                          f"{(b['status_code'] >= 500).mean():.1%} -> {(d['status_code'] >= 500).mean():.1%}" if len(d) and len(b) else "-"))
        lb, ld = window(logs, "timestamp", True), window(logs, "timestamp", False)
        who = [root, *callers]
        err_b = (lb["service"].isin(who) & lb["level"].isin(["ERROR", "FATAL"])).sum() * (end - start) / (first - spans["start_time"].min())
        err_d = (ld["service"].isin(who) & ld["level"].isin(["ERROR", "FATAL"])).sum()
        mb, md = window(metrics, "timestamp", True), window(metrics, "timestamp", False)
        pod = fault["root_cause_instance"]
        mb = mb[(mb["instance"] == pod) if pod else (mb["service"] == root)].groupby("metric")["value"].median()
        md = md[(md["instance"] == pod) if pod else (md["service"] == root)].groupby("metric")["value"].median()
        change = ((md - mb).abs() / (mb.abs() + 1e-9)).drop(["request_rate"], errors="ignore").sort_values(ascending=False)
        top = f"{change.index[0]} {mb[change.index[0]]:.3g} -> {md[change.index[0]]:.3g}" if len(change) else "-"
        rows.append(f"| {fault['id']} | {fault['type']} | {root} | {cells[0][0]} | {cells[1][0]} | {cells[0][1]} | "
                    f"{cells[1][1]} | {err_b:.0f} -> {err_d} | {top} |")
    return rows


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print("\n".join(fault_rows(MeltBundle.read(sys.argv[1]))))
