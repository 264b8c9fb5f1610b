"""The step loop of `melt serve`: stored segments -> :class:`StreamDetector` -> state -> sinks.

A step ``[t, t + serve.step)`` is scored once data ``serve.lateness`` newer than its end has
arrived (event time, as stream processors set a watermark), or once the feed has been idle for
``serve.idle`` of wall time, when the steps up to the newest data are closed and as many empty ones
as resolve the open incidents. Data that arrives later for a step already scored stays in the
segments but is not scored.

With ``detect.retrain_every``, the first step of each period is scored with detectors fitted
again on the stored history before it (:mod:`melt.serve.refit`). After the steps of a tick, the
segments past retention are deleted and the small ones wholly before the new position merged
(:mod:`melt.serve.compaction`).

Each step is committed in one SQLite transaction (:meth:`StateDB.commit_step`: the new report
versions, a pending delivery per sink, the stream position), after the detector's state was saved
under the step's end; a restart loads the state saved for the committed position and goes on
from there, so no step is scored twice and none is skipped. Deliveries are made from the pending
rows after the commit and marked done one by one; a version that cannot be delivered stays
pending and is tried again on the next step, with the same idempotency key
(``<fingerprint>-v<version>``), so a ticketing system sees each version once.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

from melt.core.bundle import MeltBundle
from melt.core.errors import ConfigError, DeliveryError, MeltError
from melt.core.memory import release_memory
from melt.core.progress import log
from melt.core.settings import Settings
from melt.core.timeutil import format_duration
from melt.delivery.sinks import Sink
from melt.pipeline.stream import StreamDetector
from melt.serve.durable import fsync_path
from melt.serve.refit import Refitter
from melt.serve.state import StateDB

KEPT_SNAPSHOTS = 3


class Runner:
    """Scores every closed step in a background thread (:meth:`start`), or one call at a time (:meth:`tick`).

    Args:
        store: the segment store (:class:`melt.serve.segments.SegmentStore`).
        state: the SQLite state.
        detector: the fitted detectors, as a stream.
        sinks: where report versions go (``serve.sinks``).
        metrics: :class:`melt.serve.metrics.ServeMetrics`, or ``None``.
        poll: seconds between looks at the store.
        quiet: no log lines.
    """

    def __init__(self, store: Any, state: StateDB, detector: StreamDetector, sinks: list[Sink],
                 metrics: Any | None = None, *, poll: float = 0.5, quiet: bool = False) -> None:
        self.store, self.state, self.detector, self.sinks, self.metrics = store, state, detector, sinks, metrics
        self.settings: Settings = detector.settings
        self.poll, self.quiet = poll, quiet
        self.snapshots = Path(self.settings.serve.data_dir) / "stream"
        self.idle_after = self.settings.serve.idle.total_seconds()  # wall seconds without new data that close the feed
        self.error: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one step at a time (the thread, and tick() from tests)
        self._newest: pd.Timestamp | None = None
        self._newest_seen_at = time.monotonic()
        self._restored = False
        self._deliverer: threading.Thread | None = None
        self._delivery_lock = threading.Lock()
        self._retry_at: dict[tuple[str, int, str], float] = {}  # a failed delivery waits before its next try
        self.check(self.settings)
        self.refitter = Refitter(self.settings, store, quiet)

    @staticmethod
    def check(settings: Settings) -> None:
        """Refuse settings a stream cannot run with.

        Raises:
            ConfigError: ``serve.step`` is not whole ensemble windows, or ``detect.retrain_every``
                not whole steps.
        """
        window, step = settings.ensemble.window, settings.serve.step
        if step < window or step % window != pd.Timedelta(0):
            raise ConfigError(f"serve.step ({format_duration(step)}) must be a whole number of ensemble.window "
                              f"({format_duration(window)})")
        Refitter.check(settings)

    @classmethod
    def build(cls, settings: Settings, model_dir: str | Path, store: Any, state: StateDB, metrics: Any | None = None,
              quiet: bool = False) -> Runner:
        """The production runner: the fitted models of ``model_dir`` as a stream, delivering through
        ``serve.sinks`` (reports of the files sink in ``<data_dir>/reports``).

        Raises:
            BundleError | PluginError: the model directory is missing or holds a model that cannot load.
        """
        from explain.explainer import Explainer
        from melt.delivery.sinks import make_sinks
        from melt.pipeline.fitting import load_models

        models = load_models(model_dir)  # first: a model that cannot load is the likeliest mistake
        sinks = make_sinks(settings.serve.sinks, settings.serve.data_dir / "reports", settings.report)
        detector = StreamDetector(models, settings, Explainer(settings.explain))
        return cls(store, state, detector, sinks, metrics, quiet=quiet)

    # ------------------------------------------------------------------ life cycle
    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def position(self) -> pd.Timestamp | None:
        return self.state.position()

    def start(self) -> None:
        self._restore()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="melt-serve-steps", daemon=True)
        self._deliverer = threading.Thread(target=self._deliver_loop, name="melt-serve-deliveries", daemon=True)
        self._thread.start()
        self._deliverer.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._deliverer):
            if thread is not None:
                thread.join()
        self._thread = self._deliverer = None

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.tick(self.idle_after, deliver=False)
                self.error = None
            except Exception as exc:  # the loop must outlive one bad step; /readyz shows the error
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                if reason != self.error:
                    log(f"step failed, retrying: {reason}", self.quiet, stage="melt warning")
                self.error = reason

    def _deliver_loop(self) -> None:
        """Deliveries in their own thread: a slow or dead webhook never holds up scoring."""
        while not self._stop.wait(self.poll):
            try:
                self.deliver()
            except Exception as exc:  # a database hiccup: try again on the next round
                log(f"delivery round failed: {type(exc).__name__}: {exc}".splitlines()[0][:300], self.quiet,
                    stage="melt warning")

    # ------------------------------------------------------------------ steps
    def tick(self, idle_after: float | None = None, deliver: bool = True) -> int:
        """Score every step that is closed now (and deliver, unless the delivery thread does); the
        number of steps scored."""
        with self._lock:
            self._restore()
            serve = self.settings.serve
            self.store.refresh()  # a reader beside the receiver's process sees its new segments
            newest = self.store.max_time()
            if newest is None:
                if deliver:
                    self.deliver()
                return 0
            if self._newest is None or newest > self._newest:
                self._newest, self._newest_seen_at = newest, time.monotonic()
            idle = time.monotonic() - self._newest_seen_at >= (self.idle_after if idle_after is None else idle_after)
            position = self.state.position()
            if position is None:
                first = self.store.min_time()
                position = first.floor(serve.step)
            watermark = newest - serve.lateness
            if idle:  # the feed paused: close the step that holds its newest data, no further
                watermark = newest.floor(serve.step) + serve.step
            steps = 0
            while position + serve.step <= watermark and not self._stop.is_set():
                position = self._skip_quiet(position, newest)
                if position + serve.step > watermark:
                    break
                self._step(position, position + serve.step, newest)
                position += serve.step
                steps += 1
            if deliver:
                self.deliver()
            if steps:
                self.store.sweep()
                self.store.compact(position, serve.step)  # the small files of each step scored: one per signal
                release_memory()  # the merge's arrow buffers too
            return steps

    def _skip_quiet(self, position: pd.Timestamp, newest: pd.Timestamp) -> pd.Timestamp:
        """Where the next step starts: ``position``, or past a stretch with no data at all when
        nothing is open (a sender that was down for a day costs no empty steps)."""
        ensemble, step = self.settings.ensemble, self.settings.serve.step
        if self.detector.open_incidents():
            return position
        recent = self.detector.alerts["window"].max() if len(self.detector.alerts) else None
        if recent is not None and position - recent <= ensemble.merge_gap + 2 * ensemble.window:
            return position  # alerts that could still form an incident need their quiet steps
        following = self.store.next_time(position)
        if following is None:
            return position
        resume = following.floor(step)
        if resume - position < 2 * step:
            return position
        self._save(resume)
        self.state.commit_step(resume, [])
        if self.metrics is not None:
            self.metrics.step_done(resume, newest)
        log(f"no data from {position.isoformat()} to {resume.isoformat()}: skipped", self.quiet)
        return resume

    def _step(self, start: pd.Timestamp, end: pd.Timestamp, newest: pd.Timestamp) -> None:
        period = self.refitter.due(start)
        if period is not None:  # the first step of a new period: refit on the window before it first
            self.detector.use_models(self.refitter.refit(period, self.detector.models))
        bundle = self._bundle(start, end)
        before = self.detector.snapshot()
        try:
            result = self.detector.step(bundle, start, end)
            details = self._details(result.updates)
            versions = [{"report": u.report, "status": u.status, "detail": details.get(u.incident_id)}
                        for u in result.updates]
            self._save(end)
            self.state.commit_step(end, versions)
        except BaseException:
            self.detector.restore(before)  # the step is tried again from the same state, never counted twice
            raise
        if self.metrics is not None:
            for name, seconds in result.seconds.items():
                if name != "step":
                    self.metrics.scored(name, seconds)
            self.metrics.step_done(end, newest)
            self.metrics.incidents_open(self.state.open_count())
        for update in result.updates:
            log(f"{update.incident_id} {update.status}: {', '.join(update.report['services'][:3])}", self.quiet)
        del bundle, result
        release_memory()  # the step's frames are gone: RSS falls back before the next one

    def _details(self, updates: list[Any]) -> dict[str, dict[str, Any]]:
        """The incident page's detail of each changed incident, from the data of its window."""
        updates = [u for u in updates if u.incident is not None]
        if not updates:
            return {}
        from melt.reports.detail import incident_details

        lookback = self.settings.rca.lookback
        start = min(u.incident.start for u in updates) - lookback
        end = max(u.incident.end for u in updates)
        data = MeltBundle(**{signal: _present(self.store.read(signal, start, end))
                             for signal in ("metrics", "logs", "traces", "events")}, validate=False)
        return incident_details([u.incident for u in updates], [u.report for u in updates], self.detector.scores,
                                data, self.detector.signal_of, self.detector.graph, self.settings)

    def _bundle(self, start: pd.Timestamp, end: pd.Timestamp) -> MeltBundle:
        """The step's data with its context: metrics and events from ``serve.context`` before it (the
        detectors that smooth or read sequences need it), and the traces that start in the step,
        whole, with their log lines. Spans and lines are read from ``lateness`` before the step to
        ``lateness`` after it, so that a trace that starts in the step comes whole and the late
        spans of one that started in the step before are known as such and left out (the trace
        and log detectors score each window on its own: they need no earlier windows)."""
        serve = self.settings.serve
        context = {signal: _present(self.store.read(signal, start - serve.context, end))  # read by time already
                   for signal in ("metrics", "events")}
        spans_and_lines = MeltBundle(**{signal: _present(self.store.read(signal, start - serve.lateness,
                                                                          end + serve.lateness))
                                        for signal in ("traces", "logs")}, validate=False)
        # the traces that start in the step, whole, with their lines: a trace that began in the step
        # before was scored there (the lateness read before the step tells the two apart)
        own = spans_and_lines.slice_time(start, end)
        return MeltBundle(**context, traces=own.traces, logs=own.logs, validate=False)

    # ------------------------------------------------------------------ delivery
    def deliver(self) -> int:
        """Make every pending delivery that is due; the number made. A failed one waits (doubling
        from ``poll`` up to 5 minutes) before it is tried again; its key stays the same."""
        with self._delivery_lock:
            return self._deliver()

    def _deliver(self) -> int:
        pending = self.state.pending_deliveries()
        if not pending:
            return 0
        by_name = {sink.name: sink for sink in self.sinks}
        whole: dict[str, bool] = {}
        done = 0
        now = time.monotonic()
        for row in pending:
            sink = by_name.get(row.sink)
            key = (row.incident_id, row.version, row.sink)
            if sink is None or self._retry_at.get(key, 0.0) > now:
                continue  # a sink no longer configured keeps its rows for when it is again
            try:
                if row.sink == "webhook":
                    attempt = sink.webhook.send(row.report, key=row.idempotency_key)  # type: ignore[attr-defined]
                    ok, error = attempt.ok, attempt.error
                elif row.sink in ("files", "html"):  # they keep an index of every incident: rewrite it once
                    if row.sink not in whole:
                        reports = [r["report"] for r in self.state.latest_reports()]
                        if row.sink == "html":
                            sink.details = {r["incident_id"]: d for r in reports  # type: ignore[attr-defined]
                                            if (d := self.state.detail(r["incident_id"])) is not None}
                        outcome = sink.deliver(reports)
                        whole[row.sink] = outcome.error is None
                        if outcome.error is not None:
                            raise DeliveryError(outcome.error)
                    elif not whole[row.sink]:
                        raise DeliveryError(f"{row.sink}: the index could not be written")
                    ok, error = True, None
                else:
                    sink.deliver([row.report])
                    ok, error = True, None
            except Exception as exc:  # whatever a sink raises, the row stays pending with the reason
                ok, error = False, f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            self.state.mark_delivered(row.incident_id, row.version, row.sink, ok=ok, error=error)
            if ok:
                done += 1
                self._retry_at.pop(key, None)
            else:
                wait = min(self.poll * 2 ** min(row.attempts + 1, 16), 300.0)
                self._retry_at[key] = time.monotonic() + wait
        return done

    # ------------------------------------------------------------------ the detector's state
    def _save(self, end: pd.Timestamp) -> None:
        self.snapshots.mkdir(parents=True, exist_ok=True)
        path = self.snapshots / f"{end.value}.pkl"
        temporary = path.with_suffix(".tmp")
        with temporary.open("wb") as handle:
            pickle.dump(self.detector.snapshot(), handle, protocol=pickle.HIGHEST_PROTOCOL)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
        fsync_path(self.snapshots)  # the rename is durable before the step's commit names this file
        for old in sorted(self.snapshots.glob("*.pkl"), key=lambda p: int(p.stem))[:-KEPT_SNAPSHOTS]:
            old.unlink(missing_ok=True)

    def _restore(self) -> None:
        if self._restored:
            return
        self._restored = True
        position = self.state.position()
        if position is None:
            return
        refitted = self.refitter.restore(position, self.settings.serve.step)
        if refitted is not None:
            self.detector.use_models(refitted)
        path = self.snapshots / f"{position.value}.pkl"
        if not path.is_file():
            log(f"no saved stream state for {position.isoformat()}: incidents open before it start afresh",
                self.quiet, stage="melt warning")
            return
        with path.open("rb") as handle:
            self.detector.restore(pickle.load(handle))

    # ------------------------------------------------------------------ the API's requests
    def explain(self, incident_id: str) -> dict[str, Any]:
        """The incident's latest report with an explanation written now (:func:`explain_incident`)."""
        return explain_incident(self.state, self.settings, incident_id)

    def detect_bundle(self, bundle: MeltBundle) -> list[dict[str, Any]]:
        """The batch pipeline on an uploaded bundle with the served models (:func:`detect_bundle`)."""
        return detect_bundle(self.detector.models, self.settings, bundle, self.detector.explainer)


def explain_incident(state: StateDB, settings: Settings, incident_id: str) -> dict[str, Any]:
    """The incident's latest report with an explanation written now (``explain`` settings; an LLM
    that fails falls back to the template, as in ``melt detect``).

    Raises:
        KeyError: no such incident.
    """
    import copy

    from explain.explainer import Explainer
    from explain.facts import build_facts
    from melt.reports.report import validate_report, with_explanation

    report = state.incident(incident_id)
    if report is None:
        raise KeyError(incident_id)
    summary = {"id": report["incident_id"], "start": report["window"]["start"], "end": report["window"]["end"],
               "services": report["services"], "severity": report["anomaly_details"]["severity"],
               "confidence": report["anomaly_details"]["confidence"], "peak_score": None}
    facts = build_facts(summary, report["root_cause_analysis"]["ranked_causes"], report["evidence"],
                        settings.explain.max_fact_tokens, report.get("forecast"))
    explanation = Explainer(settings.explain).explain_all([facts], quiet=True)[0]
    return validate_report(with_explanation(copy.deepcopy(report), explanation))


def detect_bundle(models: dict[str, Any], settings: Settings, bundle: MeltBundle,
                  explainer: Any | None = None) -> list[dict[str, Any]]:
    """The batch pipeline on ``bundle`` with the served ``models``: its reports, not stored.

    Raises:
        MeltError: the bundle holds none of the signals the models read.
    """
    from melt.pipeline.batch import incidents_and_reports
    from melt.pipeline.fitting import score_all

    usable = {n: m for n, m in models.items() if m.signal in bundle.signals()}
    if not usable:
        raise MeltError(f"the upload holds none of the signals the served models read "
                        f"({', '.join(sorted({m.signal for m in models.values()}))})")
    scores = score_all(usable, bundle, quiet=True)
    signal_of = {name: model.signal for name, model in usable.items()}
    return incidents_and_reports(scores, signal_of, bundle, settings, explainer)[1]


def _present(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    return frame if frame is not None and len(frame) else None
