"""Fuse calibrated detector scores per (service, window) into alerts, and alerts into incidents.

Fusion follows Merlion's ensembles (max or mean of calibrated scores, optionally weighted).
Alerts are (service, window) cells whose fused score crosses ``threshold`` with enough distinct
signals agreeing. Alerts whose windows lie within ``merge_gap`` of each other, on services within
``connect_hops`` calls of each other in the dependency graph, form one incident: duplicate and
flapping alerts extend an incident instead of opening new ones, and two unrelated failures at the
same time stay apart. A failure that faded to its tail and then fell quiet for a window, or flared
up again, is over, even when the next one starts within ``merge_gap``. A lone weak alert (a blip: alone in its window,
nothing in the windows next to it, under ``blip_factor`` x ``threshold``) neither opens nor bridges
an incident, and incidents with fewer than ``min_alerts`` alerts are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd

from melt.core.settings import EnsembleSettings

ALERT_SIGNALS = ("metrics", "logs", "traces")  # events are context for RCA, not alerts on their own


@dataclass
class Incident:
    """A group of alerts close in time, with the score rows behind them."""

    id: str
    start: pd.Timestamp
    end: pd.Timestamp
    services: list[str]
    severity: str
    confidence: float
    peak_score: float
    alerts: pd.DataFrame = field(repr=False)
    evidence: pd.DataFrame = field(repr=False)
    scope: set[str] | None = field(default=None, repr=False)  # services near it in the graph; None = all

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "start": self.start.isoformat(), "end": self.end.isoformat(), "services": self.services,
                "severity": self.severity, "confidence": round(self.confidence, 3), "peak_score": round(self.peak_score, 3)}


def severity_of(score: float, threshold: float) -> str:
    """Severity bands relative to the alert threshold."""
    if score >= threshold * 3:
        return "critical"
    if score >= threshold * 2:
        return "high"
    if score >= threshold * 1.3:
        return "medium"
    return "low"


def confidence_of(peak: float, threshold: float, n_signals: int = 1) -> float:
    """Confidence in [0.05, 0.99]: how far the peak is past the threshold, and how many signals agree."""
    return float(np.clip(1 - np.exp(-max(peak - threshold, 0.0) / threshold - 0.3 * (n_signals - 1)), 0.05, 0.99))


def fuse(scores: pd.DataFrame, signal_of: dict[str, str], window: pd.Timedelta, combiner: str,
         weights: Mapping[str, float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fused score per (service, window), and the per-detector maxima it was fused from."""
    frame = scores.assign(window=scores["timestamp"].dt.floor(window),
                          signal=scores["detector"].map(signal_of))
    frame = frame[frame["signal"].isin(ALERT_SIGNALS)]
    per_detector = frame.groupby(["service", "window", "detector"], observed=True)["score"].max().reset_index()
    per_detector["weight"] = per_detector["detector"].map(lambda d: float(weights.get(d, 1.0)))
    per_detector["weighted"] = per_detector["score"] * per_detector["weight"]
    per_detector["signal"] = per_detector["detector"].map(signal_of)
    grouped = per_detector.groupby(["service", "window"], observed=True)
    if combiner == "max":
        fused = grouped["weighted"].max()
    elif combiner == "mean":
        fused = grouped["weighted"].mean()
    else:  # weighted mean
        fused = grouped["weighted"].sum() / grouped["weight"].sum().replace(0, np.nan)
    out = fused.rename("fused").reset_index()
    out["fused"] = out["fused"].fillna(0.0)
    return out, per_detector


def nearby_services(services: list[str], graph: nx.DiGraph | None, hops: int) -> dict[str, set[str]]:
    """For each service the graph knows: the services at most ``hops`` calls away, either direction.

    Empty when there is no graph or ``hops`` is 0 (grouping by time only).
    """
    if graph is None or hops <= 0:
        return {}
    undirected = graph.to_undirected(as_view=True)
    return {s: set(nx.single_source_shortest_path_length(undirected, s, cutoff=hops)) for s in services if s in graph}


def connected_groups(services: list[str], near: dict[str, set[str]]) -> dict[str, int]:
    """Group number per service: services linked through ``near`` (:func:`nearby_services`) share one.

    Services the graph does not know (metrics only, no spans) cannot be placed, so they join the
    largest group instead of opening incidents of their own. Without ``near``: one group.
    """
    known = [s for s in services if s in near]
    if not known:
        return dict.fromkeys(services, 0)
    linked = nx.Graph()
    linked.add_nodes_from(known)
    for service in known:
        linked.add_edges_from((service, other) for other in near[service] & set(known))
    components = sorted(nx.connected_components(linked), key=lambda c: (-len(c), min(c)))
    group = {service: number for number, component in enumerate(components) for service in component}
    return {service: group.get(service, 0) for service in services}


def neighbourhood(services: list[str], near: dict[str, set[str]]) -> set[str] | None:
    """``services`` and everything near one of them; ``None`` when the graph cannot tell."""
    if not any(s in near for s in services):
        return None
    return set(services).union(*(near[s] for s in services if s in near))


def drop_blips(alerts: pd.DataFrame, step: pd.Timedelta, below: float) -> pd.DataFrame:
    """Alerts without the blips: a lone alert (the only one in its window, no alert in the windows
    next to it) whose fused score is under ``below``.

    Such a blip is the false alarm any threshold lets through now and then. Kept, it would open no
    incident (``min_alerts``), but it would bridge the quiet gap between two separate failures and
    chain them into one incident. A strong lone alert, or a flapping service that alerts again and
    again, still counts.
    """
    per_window = alerts.groupby("window")["fused"].agg(["size", "max"])
    gaps = (per_window.index[1:] - per_window.index[:-1]) > step
    apart = np.r_[True, gaps] & np.r_[gaps, True]
    blips = per_window.index[(per_window["size"].to_numpy() == 1) & apart & (per_window["max"].to_numpy() < below)]
    return alerts[~alerts["window"].isin(blips)]


def time_groups(peak_per_window: pd.Series, gap: pd.Timedelta, step: pd.Timedelta, settled: float) -> pd.Series:
    """Group number per alert window: a new group opens after a quiet stretch longer than ``gap``,
    or once the failure had settled, after a quiet window or where the peak more than doubles.

    Settled: the previous alert window peaked under ``settled`` x the group's peak so far. A
    failure that has faded to its tail and then falls silent, or flares up again, is over: what
    follows is a new failure, even within ``gap`` (faults 2-3 minutes apart, or one that starts
    while the last one's tail still alerts). A failure that merely flaps, quiet for a window at
    full strength, stays one group.
    """
    windows = peak_per_window.sort_index()
    quiet_before = np.r_[False, (windows.index[1:] - windows.index[:-1]) > step]
    far_before = np.r_[False, (windows.index[1:] - windows.index[:-1]) > gap]
    peaks = windows.to_numpy(float)
    groups = np.zeros(len(windows), dtype=np.int64)
    group, running_peak = 0, 0.0
    for i, peak in enumerate(peaks):  # sequential: the running peak restarts with each group
        if i > 0:
            settled_before = peaks[i - 1] < settled * running_peak
            if far_before[i] or (settled_before and (quiet_before[i] or peak > 2.0 * peaks[i - 1])):
                group, running_peak = group + 1, 0.0
        groups[i] = group
        running_peak = max(running_peak, peak)
    return pd.Series(groups, index=windows.index)


def group_incidents(scores: pd.DataFrame, signal_of: dict[str, str], settings: EnsembleSettings,
                    graph: nx.DiGraph | None = None) -> list[Incident]:
    """Alerts from fused scores, grouped in time and on the graph into incidents."""
    return incidents_from_alerts(alert_cells(scores, signal_of, settings), scores, signal_of, settings, graph)


def alert_cells(scores: pd.DataFrame, signal_of: dict[str, str], settings: EnsembleSettings) -> pd.DataFrame:
    """The (service, window) cells whose fused score crosses the threshold with enough signals agreeing.

    A cell depends only on the score rows of its own window, so a stream can compute the cells of
    each closed step alone and concatenate them (:mod:`melt.pipeline.stream`).
    """
    columns = ["service", "window", "fused", "signals"]
    if scores.empty:
        return pd.DataFrame(columns=columns)
    threshold = settings.threshold
    fused, per_detector = fuse(scores, signal_of, settings.window, settings.combiner, settings.weights)
    hot = per_detector[per_detector["score"] >= threshold]
    agreeing = hot.groupby(["service", "window"], observed=True)["signal"].nunique().rename("signals")
    alerts = fused.join(agreeing, on=["service", "window"]).fillna({"signals": 0})
    alerts = alerts[(alerts["fused"] >= threshold) & (alerts["signals"] >= settings.min_signals)]
    return alerts[columns].reset_index(drop=True)


def incidents_from_alerts(alerts: pd.DataFrame, scores: pd.DataFrame, signal_of: dict[str, str],
                          settings: EnsembleSettings, graph: nx.DiGraph | None = None,
                          first_number: int = 1) -> list[Incident]:
    """Incidents from alert cells (:func:`alert_cells`): blips dropped, grouped in time and on the graph.

    ``first_number`` numbers the first incident's id (a stream that has closed earlier incidents
    goes on from their count). ``scores`` supplies each incident's evidence rows.
    """
    threshold = settings.threshold
    if alerts.empty:
        return []
    alerts = drop_blips(alerts, settings.window, settings.blip_factor * threshold)
    if alerts.empty:
        return []
    alerts = alerts.sort_values(["window", "fused"], ascending=[True, False]).reset_index(drop=True)
    peak_per_window = alerts.groupby("window")["fused"].max()
    group_of_window = time_groups(peak_per_window, settings.merge_gap, settings.window, settings.settled_fraction)
    alerts["time_group"] = alerts["window"].map(group_of_window)
    near = nearby_services(alerts["service"].unique().tolist(), graph, settings.connect_hops)
    alerts["graph_group"] = 0
    for _, same_time in alerts.groupby("time_group", sort=False):
        component = connected_groups(same_time["service"].unique().tolist(), near)
        alerts.loc[same_time.index, "graph_group"] = same_time["service"].map(component).to_numpy()
    step = settings.window
    incidents: list[Incident] = []
    groups = sorted(alerts.groupby(["time_group", "graph_group"], sort=False), key=lambda g: (g[1]["window"].min(), g[0]))
    for _, group in groups:
        if len(group) < settings.min_alerts:
            continue
        start, end = group["window"].min(), group["window"].max() + step
        services = group.groupby("service", observed=True)["fused"].max().sort_values(ascending=False)
        peak = float(services.iloc[0])
        in_window = scores[(scores["timestamp"] >= start) & (scores["timestamp"] < end)
                           & scores["detector"].map(signal_of).isin(ALERT_SIGNALS)]
        scope = neighbourhood(services.index.tolist(), near)
        if scope is not None:
            in_window = in_window[in_window["service"].isin(scope)]
        confidence = confidence_of(peak, threshold, int(group["signals"].max()))
        incidents.append(Incident(
            id=f"INC-{start.strftime('%Y%m%dT%H%M')}-{len(incidents) + first_number:03d}",
            start=start, end=end, services=services.index.tolist(),
            severity=severity_of(peak, threshold), confidence=confidence, peak_score=peak,
            alerts=group.drop(columns=["time_group", "graph_group"]).reset_index(drop=True),
            evidence=in_window.reset_index(drop=True), scope=scope,
        ))
    return incidents


def window_incident(scores: pd.DataFrame, signal_of: dict[str, str], start: pd.Timestamp, end: pd.Timestamp,
                    threshold: float) -> Incident:
    """An incident over a window that is known already (an alert from elsewhere, a labelled fault).

    Its services are those with alert-signal evidence in the window, loudest first.
    """
    in_window = scores[(scores["timestamp"] >= start) & (scores["timestamp"] < end)
                       & scores["detector"].map(signal_of).isin(ALERT_SIGNALS)]
    loudest = in_window.groupby("service", observed=True)["score"].max().sort_values(ascending=False)
    peak = float(loudest.iloc[0]) if len(loudest) else 0.0
    confidence = confidence_of(peak, threshold)
    return Incident(id=f"INC-{start.strftime('%Y%m%dT%H%M')}-W", start=start, end=end,
                    services=loudest[loudest >= threshold].index.tolist() or loudest.index[:5].tolist(),
                    severity=severity_of(peak, threshold), confidence=confidence, peak_score=peak,
                    alerts=pd.DataFrame(), evidence=in_window.reset_index(drop=True))

