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
from melt.serve.runner import Runner, detect_bundle, explain_incident
from melt.serve.state import StateDB

START_TIMEOUT = 600.0
"""Seconds the child may take to load its models before ``melt serve`` gives up."""
MAX_RESTART_WAIT = 60.0
"""The longest wait before a dead step process is started again."""
STATUS_EVERY = 0.5
"""Seconds between the child's reports of its state."""


class StepProcess:
    """A :class:`~melt.serve.runner.Runner` in a child process, behind the interface the app needs.

    A child that dies (killed for memory, say) is started again after a wait that doubles from 1 s
    to :data:`MAX_RESTART_WAIT`; it goes on from the committed position, as after any crash, and
    ``/readyz`` says it is down meanwhile.

    Args:
        settings: the typed settings (sent to the child).
        model_dir: the ``melt train`` output the child loads.
        state: the parent's handle on the state database (the API reads it; the child writes it).
        metrics: :class:`melt.serve.metrics.ServeMetrics` that the child's reports update.
        quiet: no log lines from the child.
    """

    def __init__(self, settings: Settings, model_dir: str | Path, state: StateDB, metrics: Any,
                 quiet: bool = False) -> None:
        self.settings, self.model_dir, self.state, self.metrics, self.quiet = (
            settings, Path(model_dir), state, metrics, quiet)
        self.error: str | None = None
        self.restarts = 0
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._events: Any = None
        self._stop: Any = None
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._child_alive = False
        self._models: dict[str, Any] | None = None
        self._models_lock = threading.Lock()

    @property
    def alive(self) -> bool:
        process = self._process
        return process is not None and process.is_alive() and self._child_alive

    @property
    def position(self) -> pd.Timestamp | None:
        return self.state.position()

    def start(self) -> None:
        """Check the settings, start the child and wait until it has loaded its models and started
        its loop; then watch it from a thread.

        Raises:
            ConfigError: a setting the runner refuses (checked here, before the child starts).
            MeltError: the child failed to start (its reason, one line) or took over
                :data:`START_TIMEOUT` seconds.
        """
        Runner.check(self.settings)
        position = self.state.position()
        if position is not None and self.metrics is not None:  # /metrics knows where a restart goes on from
            self.metrics.step_done(position, None)
        self._stopping.clear()
        self._spawn()
        self._supervisor = threading.Thread(target=self._supervise, name="melt-serve-step-events", daemon=True)
        self._supervisor.start()

    def _spawn(self) -> None:
        self._events, self._stop = self._context.Queue(), self._context.Event()
        process = self._context.Process(target=_child, name="melt-serve-steps", daemon=True,
                                        args=(self.settings, str(self.model_dir), self._events, self._stop,
                                              self.quiet, os.getpid()))
        process.start()
        self._process = process
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                event = self._events.get(timeout=0.5)
            except queue.Empty:
                if not process.is_alive():
                    raise MeltError(f"the step process exited at start (code {process.exitcode})") from None
                if time.monotonic() > deadline:
                    self._end_child()
                    raise MeltError(f"the step process did not start within {START_TIMEOUT:.0f}s") from None
                continue
            if event[0] == "failed":
                process.join(10)
                raise MeltError(event[1])
            if event[0] == "started":
                break
        self._child_alive = True

    def stop(self) -> None:
        """Ask the child to finish its step and stop; kill it if it has not within a minute."""
        self._stopping.set()
        self._end_child()
        if self._supervisor is not None:
            self._supervisor.join(10)
            self._supervisor = None

    def _end_child(self) -> None:
        process = self._process
        if process is None:
            return
        self._stop.set()
        process.join(60)
        if process.is_alive():
            log("the step process did not stop within 60s: killed", self.quiet, stage="melt warning")
            process.kill()
            process.join(10)
        self._child_alive = False

    def _supervise(self) -> None:
        """Apply the child's reports to the metrics and the health state; start it again if it dies."""
        wait = 1.0
        while not self._stopping.is_set():
            if self._read_until_gone():
                return
            if self._stopping.is_set():
                return
            code = self._process.exitcode if self._process is not None else None
            self.error = f"the step process died (exit code {code}); restarting in {wait:.0f}s"
            log(self.error, self.quiet, stage="melt warning")
            if self._stopping.wait(wait):
                return
            try:
                self._spawn()
                self.restarts += 1
                self.error, wait = None, 1.0
            except Exception as exc:  # noqa: BLE001 (tried again after a longer wait)
                self.error = f"the step process could not restart: {' '.join(str(exc).split())[:300]}"
                log(self.error, self.quiet, stage="melt warning")
                wait = min(wait * 2, MAX_RESTART_WAIT)

    def _read_until_gone(self) -> bool:
        """Read the child's reports until it exits; whether it stopped because it was asked to."""
        events, process = self._events, self._process
        while True:
            try:
                event = events.get(timeout=1.0)
            except queue.Empty:
                if process.is_alive():
                    continue
                self._child_alive = False
                return self._stopping.is_set()
            except (EOFError, OSError):
                self._child_alive = False
                return self._stopping.is_set()
            if event[0] == "stopped":
                self._child_alive = False
                return True
            try:
                self._apply(event)
            except Exception as exc:  # noqa: BLE001 (a bad report must not stop the watch)
                log(f"step process report {event[0]!r} not applied: {exc}", self.quiet, stage="melt warning")

    def _apply(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "status":
            self.error, self._child_alive = event[1], event[2]
        elif self.metrics is None:
            return
        elif kind == "scored":
            self.metrics.scored(event[1], event[2])
        elif kind == "step_done":
            self.metrics.step_done(event[1], event[2])
        elif kind == "incidents_open":
            self.metrics.incidents_open(event[1])

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
        from melt.serve.segments import SegmentStore

        serve = settings.serve
        store = SegmentStore.of(serve, read_only=True)
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
