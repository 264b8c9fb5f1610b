"""The step loop of `melt serve` in its own process, beside the receiver.

Receiving (HTTP, OTLP decoding, parquet writes) and scoring (pandas, numpy, torch) are both CPU
work, and in one CPython process they take turns on one interpreter lock: at 20,000 spans and
20,000 log lines a second, a step that takes 25 s alone took over a minute beside the receiver, and
the stream fell further behind every minute. So ``melt serve`` runs the :class:`~melt.serve.runner.Runner`
in a child process (``spawn``: a fresh interpreter, no locks copied from the parent's threads), as
the OpenTelemetry collector keeps its receivers apart from its processors. The two share nothing
in memory: the child reads the segments the receiver writes (a read-only
:class:`~melt.serve.segments.SegmentStore` that lists the folder each time it looks) and writes
the state database (SQLite in WAL mode takes a writer beside readers); it sends its step timings,
its position and its last error back over a queue, for ``/metrics`` and ``/readyz``.

The child dies with its parent (``PR_SET_PDEATHSIG`` on Linux, and a watch on the parent's pid
elsewhere), so a ``kill -9`` of `melt serve` leaves no scorer behind, and a restart resumes from the
committed position as after any crash.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

from melt.core.bundle import MeltBundle
from melt.core.errors import MeltError
from melt.core.progress import log
from melt.core.settings import Settings
from melt.serve.runner import detect_bundle, explain_incident
from melt.serve.state import StateDB

START_TIMEOUT = 600.0
"""Seconds the child may take to load its models before ``melt serve`` gives up."""
STATUS_EVERY = 0.5
"""Seconds between the child's reports of its state."""


class StepProcess:
    """A :class:`~melt.serve.runner.Runner` in a child process, behind the interface the app needs.

    Args:
        settings: the typed settings (sent to the child).
        model_dir: the ``melt train`` output the child loads.
        state: the parent's handle on the state database (the API reads it; the child writes it).
        metrics: :class:`melt.serve.metrics.ServeMetrics` that the child's reports update.
        quiet: no log lines from the child.
        models: the models loaded here, for ``POST /api/detect`` (loaded on its first call if not given).
    """

    def __init__(self, settings: Settings, model_dir: str | Path, state: StateDB, metrics: Any,
                 quiet: bool = False, models: dict[str, Any] | None = None) -> None:
        self.settings, self.model_dir, self.state, self.metrics, self.quiet = (
            settings, Path(model_dir), state, metrics, quiet)
        self.error: str | None = None
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._events: Any = None
        self._stop: Any = None
        self._reader: threading.Thread | None = None
        self._child_alive = False
        self._models = models
        self._models_lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive() and self._child_alive

    @property
    def position(self) -> pd.Timestamp | None:
        return self.state.position()

    def start(self) -> None:
        """Start the child and wait until it has loaded its models and started its loop.

        Raises:
            MeltError: the child failed to start (its reason, one line) or took over
                :data:`START_TIMEOUT` seconds.
        """
        self._events, self._stop = self._context.Queue(), self._context.Event()
        self._process = self._context.Process(target=_child, name="melt-serve-steps", daemon=True,
                                              args=(self.settings, str(self.model_dir), self._events, self._stop,
                                                    self.quiet, os.getpid()))
        try:
            self._process.start()
        except BaseException:
            self._process = None
            raise
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                event = self._events.get(timeout=0.5)
            except queue.Empty:
                if not self._process.is_alive():
                    raise MeltError(f"the step process exited at start (code {self._process.exitcode})") from None
                if time.monotonic() > deadline:
                    self.stop()
                    raise MeltError(f"the step process did not start within {START_TIMEOUT:.0f}s") from None
                continue
            if event[0] == "failed":
                self._process.join(10)
                raise MeltError(event[1])
            if event[0] == "started":
                break
        self._child_alive = True
        self._reader = threading.Thread(target=self._read_events, name="melt-serve-step-events", daemon=True)
        self._reader.start()

    def stop(self) -> None:
        """Ask the child to finish its step and stop; kill it if it has not within a minute."""
        if self._process is None:
            return
        self._stop.set()
        self._process.join(60)
        if self._process.is_alive():
            log("the step process did not stop within 60s: killed", self.quiet, stage="melt warning")
            self._process.kill()
            self._process.join(10)
        self._child_alive = False
        if self._reader is not None:
            self._reader.join(5)
        self._process = self._reader = None

    def _read_events(self) -> None:
        """Apply the child's reports to the metrics and the health state until it stops."""
        while self._process is not None:
            try:
                event = self._events.get(timeout=1.0)
            except queue.Empty:
                if self._process is None or not self._process.is_alive():
                    self._child_alive = False
                    return
                continue
            except (EOFError, OSError):
                self._child_alive = False
                return
            kind = event[0]
            if kind == "status":
                self.error, self._child_alive = event[1], event[2]
            elif kind == "scored" and self.metrics is not None:
                self.metrics.scored(event[1], event[2])
            elif kind == "step_done" and self.metrics is not None:
                self.metrics.step_done(event[1], event[2])
            elif kind == "incidents_open" and self.metrics is not None:
                self.metrics.incidents_open(event[1])
            elif kind == "stopped":
                self._child_alive = False
                return

    # ------------------------------------------------------------------ the API's requests
    def explain(self, incident_id: str) -> dict[str, Any]:
        return explain_incident(self.state, self.settings, incident_id)

    def detect_bundle(self, bundle: MeltBundle) -> list[dict[str, Any]]:
        """The batch pipeline with the served models, loaded here on the first upload."""
        from explain.explainer import Explainer
        from melt.pipeline.fitting import load_models

        with self._models_lock:
            if self._models is None:
                self._models = load_models(self.model_dir)
        return detect_bundle(self._models, self.settings, bundle, Explainer(self.settings.explain))


class _Relay:
    """The metrics interface the runner calls, sent to the parent over the queue."""

    def __init__(self, events: Any) -> None:
        self.events = events

    def scored(self, detector: str, seconds: float) -> None:
        self.events.put(("scored", detector, seconds))

    def step_done(self, position: pd.Timestamp, newest: pd.Timestamp | None) -> None:
        self.events.put(("step_done", position, newest))

    def incidents_open(self, n: int) -> None:
        self.events.put(("incidents_open", n))


def _child(settings: Settings, model_dir: str, events: Any, stop: Any, quiet: bool, parent: int) -> None:
    """The child's main: load the models, run the runner's threads, report, stop when told or orphaned."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent says when to stop
    try:
        from melt.serve.runner import Runner
        from melt.serve.segments import SegmentStore

        serve = settings.serve
        store = SegmentStore(serve.data_dir, retention=serve.retention, commit_interval=serve.commit_interval,
                             max_pending_bytes=int(serve.max_pending_mib * 2**20), read_only=True)
        state = StateDB(serve.db, serve.sinks)
        runner = Runner.build(settings, model_dir, store, state, _Relay(events), quiet=quiet)
        runner.start()
    except BaseException as exc:  # noqa: BLE001 (any failure is reported to the parent as one line)
        events.put(("failed", " ".join(f"{type(exc).__name__}: {exc}".split())[:500] if not isinstance(exc, MeltError)
                    else " ".join(str(exc).split())))
        return
    events.put(("started", None))
    try:
        while not stop.wait(STATUS_EVERY):
            events.put(("status", runner.error, runner.alive))
            if os.getppid() != parent:
                break
    finally:
        runner.stop()
        state.close()
        events.put(("stopped", None))


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to kill this process when its parent dies (Linux); elsewhere the loop's pid watch does."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the request took hold
        os._exit(1)


__all__ = ["StepProcess"]
