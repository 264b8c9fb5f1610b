"""Incremental detection: the batch pipeline (:mod:`melt.pipeline.batch`), one closed step at a time.

Each step is scored by the fitted detectors with the context of data before it that the caller
gives (``melt serve`` gives metrics and events ``serve.context`` before it, as rolling refits score
their periods, :mod:`melt.pipeline.rolling`), and only the step's own score rows are kept.
A detector whose score depends on what it has seen so far learns, after each step, from the rows
the step scored (:meth:`~melt.core.detector.Detector.observe`), and that learned state travels in
the snapshot.
An alert cell depends on the score rows of its own ensemble window alone
(:func:`~melt.incidents.ensemble.alert_cells`), so the cells of every step so far are those a
batch run finds on the same data, and incidents are grouped from them by the very function batch
uses (:func:`~melt.incidents.ensemble.incidents_from_alerts`). That is what makes the same data
give the same incidents in batch and in stream.

An incident is *resolved* once ``ensemble.merge_gap`` and one window have passed after its last
alert: no later alert can join it. An open incident that a later grouping merges into another
(an edge seen since links their services) is resolved with its last report. Alert cells before a quiet stretch longer than ``merge_gap`` can no longer
change any group, so they are dropped, and the number of incidents they formed numbers the next
ones, as a batch run would. Score rows are kept back to ``rca.lookback`` before the oldest cell
still held, which is what a report needs. Metric rows are kept back ``report.forecast_history``
before that (rows of each step, and the context before the first one): the history the forecast
of a report's top metric is made from, the rows a batch run would use.

An incident keeps its id across steps: a new grouping that shares an alert cell with a published
incident is that incident. Batch and stream agree when the dependency graph's edges have shown up
before the incidents they link resolve, and traces are shorter than ``serve.lateness``. A batch
run groups with the whole day's graph and numbers incidents in start order over the whole day:
where an earlier-starting group reaches ``ensemble.min_alerts`` only after a later one was
published, or an edge first seen later joins two groups, the two runs differ.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import pandas as pd

from explain.explainer import Explainer
from melt.core.bundle import MeltBundle
from melt.core.detector import Detector
from melt.core.registry import LeftOut
from melt.core.settings import Settings
from melt.incidents.ensemble import ALERT_SIGNALS, Incident, alert_cells, incidents_from_alerts
from melt.pipeline.batch import report_incidents
from melt.pipeline.fitting import score_all
from rca.graph import canonical, dependency_graph

ALERT_COLUMNS = ["service", "window", "fused", "signals"]
SCORE_COLUMNS = ["timestamp", "service", "detector", "entity", "score", "evidence", "raw_score"]
METRIC_COLUMNS = ["timestamp", "service", "metric", "value"]
METRIC_EXTRA = ["instance", "peer", "limit"]  # optional metric columns a forecast reads


@dataclass
class IncidentUpdate:
    """A new version of one incident's report: opened, grown or resolved in this step."""

    incident_id: str
    status: str  # "open" or "resolved"
    report: dict[str, Any]
    incident: Incident | None = field(repr=False)  # None: merged into another incident, closed with its last report


@dataclass
class StepResult:
    """What one step produced."""

    start: pd.Timestamp
    end: pd.Timestamp
    score_rows: int
    alerts: int
    updates: list[IncidentUpdate]
    seconds: dict[str, float]  # scoring time per detector, and "step" for the whole step
    skipped: list[LeftOut] = field(default_factory=list)


@dataclass
class _Published:
    cells: set[tuple[str, int]]
    signature: tuple[Any, ...]
    report: dict[str, Any] | None = None


class StreamDetector:
    """Fitted detectors scoring a stream step by step, with incidents as ``melt detect`` groups them.

    Args:
        models: fitted detectors (``melt train`` output, :func:`melt.pipeline.fitting.load_models`).
        settings: the typed settings; ``ensemble.window`` must divide the step.
        explainer: writes each report's explanation (default: the offline template).
    """

    def __init__(self, models: dict[str, Detector], settings: Settings, explainer: Explainer | None = None) -> None:
        self.models = models
        self.settings = settings
        self.signal_of = {name: model.signal for name, model in models.items()}
        self.explainer = explainer
        self.graph: nx.DiGraph = dependency_graph(None, settings.rca.topology_file)
        self.alerts = pd.DataFrame(columns=ALERT_COLUMNS)
        self.scores = pd.DataFrame(columns=SCORE_COLUMNS)
        self.serving: dict[pd.Timestamp, set[str]] = {}  # services with spans or logs, per ensemble window
        self.closed = 0  # incidents formed by the alert cells already dropped
        self.published: dict[str, _Published] = {}
        self.metrics = pd.DataFrame(columns=METRIC_COLUMNS)  # the history forecasts are made from
        self.metrics_until: pd.Timestamp | None = None  # metric rows before this are held already

    def step(self, bundle: MeltBundle, start: pd.Timestamp, end: pd.Timestamp) -> StepResult:
        """Score ``[start, end)`` of ``bundle`` (which may hold context before ``start``), and
        return the incidents whose report changed."""
        began = time.perf_counter()
        window = self.settings.ensemble.window
        if (end - start) % window != pd.Timedelta(0) or start.floor(window) != start:
            raise ValueError(f"a step ({start} to {end}) must be whole ensemble windows ({window})")
        seconds: dict[str, float] = {}
        skipped: list[LeftOut] = []
        usable = {name: model for name, model in self.models.items() if bundle.rows(model.signal)}
        scores = score_all(usable, bundle, quiet=True, skipped=skipped, seconds=seconds) if usable else \
            pd.DataFrame(columns=SCORE_COLUMNS)
        own = scores[(scores["timestamp"] >= start) & (scores["timestamp"] < end)]
        for model in usable.values():  # detectors that learn from what they scored (Detector.observe)
            model.observe(bundle, start, end)
        if bundle.traces is not None and len(bundle.traces):
            self.graph = canonical(nx.compose(self.graph, dependency_graph(bundle.traces)))
        self._note_serving(bundle, start, end)
        self._note_metrics(bundle, end)
        cells = alert_cells(own, self.signal_of, self.settings.ensemble)
        self.alerts = _concat(self.alerts, cells, ALERT_COLUMNS)
        self.scores = _concat(self.scores, own.reset_index(drop=True), SCORE_COLUMNS)
        updates = self._updates(end)
        self._forget(end)
        seconds["step"] = time.perf_counter() - began
        return StepResult(start, end, len(own), len(cells), updates, seconds, skipped)

    def use_models(self, models: dict[str, Detector]) -> None:
        """Score the next steps with ``models`` (a periodic refit, :mod:`melt.serve.refit`)."""
        self.models = models
        self.signal_of = {name: model.signal for name, model in models.items()}

    def open_incidents(self) -> int:
        """Incidents published and not yet resolved."""
        return sum(1 for p in self.published.values() if p.signature[-1] == "open")

    # ------------------------------------------------------------------ incidents
    def _updates(self, now: pd.Timestamp) -> list[IncidentUpdate]:
        ensemble = self.settings.ensemble
        incidents = incidents_from_alerts(self.alerts, self.scores, self.signal_of, ensemble, self.graph,
                                          first_number=self.closed + 1)
        changed: list[tuple[int, Incident, str]] = []
        taken: set[str] = set()
        for number, incident in enumerate(incidents, start=self.closed):
            cells = _cells(incident)
            incident.id = self._identity(incident, cells, taken)
            taken.add(incident.id)
            last_window = incident.end - ensemble.window
            # past merge_gap no alert can join it; one window more, and a cell at the gap's far end
            # that was a blip while its next window was unknown cannot turn out to belong to it
            status = "resolved" if now - last_window > ensemble.merge_gap + ensemble.window else "open"
            # a new version when the incident opens, gains or loses a service, changes severity, or resolves
            signature = (incident.start, tuple(sorted(incident.services)), incident.severity, status)
            known = self.published.get(incident.id)
            if known is not None and known.signature == signature:
                known.cells |= cells
                continue
            self.published[incident.id] = _Published(cells if known is None else known.cells | cells, signature)
            changed.append((number, incident, status))
        updates = []
        for number, incident, status in changed:  # one report each: its position seeds the random baseline
            report = report_incidents([incident], self.scores, None, self.signal_of, self.settings, self.graph,
                                      self.explainer, first_number=number, serving=self._served,
                                      metrics=self.metrics)[0]
            self.published[incident.id].report = report
            updates.append(IncidentUpdate(incident.id, status, report, incident))
        for incident_id, known in self.published.items():
            if incident_id in taken or known.signature[-1] != "open" or known.report is None:
                continue
            # an open incident no grouping returns any more: an edge seen since joined it to another
            # one (which keeps the alerts); it is closed with its last report, never left open
            known.signature = (*known.signature[:-1], "resolved")
            updates.append(IncidentUpdate(incident_id, "resolved", known.report, None))
        return updates

    def _identity(self, incident: Incident, cells: set[tuple[str, int]], taken: set[str]) -> str:
        """The id of the published incident this one continues, else its own (made unique)."""
        for incident_id, known in self.published.items():
            if incident_id not in taken and known.cells & cells:
                return incident_id
        candidate, number = incident.id, int(incident.id.rsplit("-", 1)[1])
        while candidate in self.published or candidate in taken:
            number += 1
            candidate = f"{incident.id.rsplit('-', 1)[0]}-{number:03d}"
        return candidate

    def _forget(self, now: pd.Timestamp) -> None:
        """Drop alert cells that no later alert can regroup, and the score rows no report needs."""
        ensemble = self.settings.ensemble
        windows = pd.Series(sorted(self.alerts["window"].unique())) if len(self.alerts) else pd.Series([], dtype=object)
        if len(windows) > 1:
            gaps = windows.diff() > ensemble.merge_gap
            if gaps.any():
                boundary = windows[gaps].iloc[-1]  # the last alert window after a quiet stretch
                before = self.alerts[self.alerts["window"] < boundary]
                self.closed += len(incidents_from_alerts(before, self.scores.iloc[0:0], self.signal_of, ensemble,
                                                         self.graph))
                self.alerts = self.alerts[self.alerts["window"] >= boundary].reset_index(drop=True)
                for incident_id in [i for i, p in self.published.items() if p.signature[-1] == "resolved"
                                    and not p.cells & set(_cells_of(self.alerts))]:
                    del self.published[incident_id]
        oldest = self.alerts["window"].min() if len(self.alerts) else now
        keep_from = min(oldest, now) - self.settings.rca.lookback - ensemble.window
        self.scores = self.scores[self.scores["timestamp"] >= keep_from].reset_index(drop=True)
        self.serving = {w: s for w, s in self.serving.items() if w >= keep_from.floor(ensemble.window)}
        if len(self.metrics):
            history_from = min(oldest, now) - self.settings.report.forecast_history - ensemble.window
            self.metrics = self.metrics[self.metrics["timestamp"] >= history_from].reset_index(drop=True)

    # ------------------------------------------------------------------ the services that served requests
    def _note_serving(self, bundle: MeltBundle, start: pd.Timestamp, end: pd.Timestamp) -> None:
        window = self.settings.ensemble.window
        for frame, column, service in ((bundle.traces, "start_time", "service_name"),
                                       (bundle.logs, "timestamp", "service")):
            if frame is None or not len(frame) or column not in frame.columns:
                continue
            inside = frame[(frame[column] >= start) & (frame[column] < end)]
            pairs = inside.assign(w=inside[column].dt.floor(window))[["w", service]].dropna().drop_duplicates()
            for w, names in pairs.groupby("w")[service]:
                self.serving.setdefault(w, set()).update(names.tolist())

    def _note_metrics(self, bundle: MeltBundle, end: pd.Timestamp) -> None:
        """Add the metric rows before ``end`` not held yet (none when reports carry no forecast)."""
        frame = bundle.metrics
        if self.settings.report.forecast_horizon is None or frame is None or not len(frame):
            return
        new = frame["timestamp"] < end
        if self.metrics_until is not None:
            new &= frame["timestamp"] >= self.metrics_until
        rows = frame.loc[new, [*METRIC_COLUMNS, *[c for c in METRIC_EXTRA if c in frame.columns]]]
        self.metrics = _concat(self.metrics, rows.reset_index(drop=True), METRIC_COLUMNS)
        self.metrics_until = end if self.metrics_until is None else max(self.metrics_until, end)

    def _served(self, start: pd.Timestamp, end: pd.Timestamp) -> set[str]:
        window = self.settings.ensemble.window
        first = start.floor(window)
        return set().union(*(names for w, names in self.serving.items() if first <= w < end))

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> dict[str, Any]:
        """The stream's state, to restore after a restart (:meth:`restore`): frames and plain values."""
        return {"alerts": self.alerts, "scores": self.scores, "closed": self.closed,
                "edges": [[a, b, data] for a, b, data in self.graph.edges(data=True)],
                "nodes": list(self.graph.nodes()),
                "serving": {w.isoformat(): sorted(s) for w, s in self.serving.items()},
                "metrics": self.metrics, "metrics_until": self.metrics_until,
                "online": {name: model.online_state() for name, model in self.models.items()},
                "published": {i: {"cells": sorted([s, int(w)] for s, w in p.cells), "report": p.report,
                                  "signature": [_plain(v) for v in p.signature]} for i, p in self.published.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`snapshot`'s output."""
        self.alerts = _concat(pd.DataFrame(columns=ALERT_COLUMNS), state["alerts"], ALERT_COLUMNS)
        self.scores = _concat(pd.DataFrame(columns=SCORE_COLUMNS), state["scores"], SCORE_COLUMNS)
        self.closed = int(state["closed"])
        graph = nx.DiGraph()
        graph.add_nodes_from(state["nodes"])
        graph.add_edges_from((a, b, data) for a, b, data in state["edges"])
        self.graph = canonical(graph)
        self.serving = {pd.Timestamp(w): set(s) for w, s in state["serving"].items()}
        self.metrics = _concat(pd.DataFrame(columns=METRIC_COLUMNS), state.get("metrics", pd.DataFrame()),
                               METRIC_COLUMNS)  # a snapshot from before forecasts holds none
        self.metrics_until = state.get("metrics_until")
        for name, online in state.get("online", {}).items():  # what the models learned since they were fitted
            if online is not None and name in self.models:
                self.models[name].restore_online(online)
        self.published = {}
        for incident_id, p in state["published"].items():
            start, services, severity, status = p["signature"]
            self.published[incident_id] = _Published(
                {(s, int(w)) for s, w in p["cells"]}, (pd.Timestamp(start), tuple(services), severity, status),
                p.get("report"))


def _cells(incident: Incident) -> set[tuple[str, int]]:
    return set(_cells_of(incident.alerts))


def _cells_of(alerts: pd.DataFrame) -> list[tuple[str, int]]:
    """(service, window in ns) of each alert cell."""
    if alerts.empty:
        return []
    return list(zip(alerts["service"].astype(str), alerts["window"].astype("int64"), strict=True))


def _concat(base: pd.DataFrame, more: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``base`` then ``more``; every column either has is kept (detectors add their own, e.g. the
    caller of a call edge), ``columns`` at least."""
    parts = [frame for frame in (base, more) if len(frame)]
    if not parts:
        return base.iloc[0:0] if len(base.columns) else pd.DataFrame(columns=columns)
    joined = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
    return joined.reindex(columns=[*columns, *[c for c in joined.columns if c not in columns]])



def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, pd.Timestamp) else list(value) if isinstance(value, tuple) else value


__all__ = ["ALERT_SIGNALS", "IncidentUpdate", "StepResult", "StreamDetector"]
