"""Periodic refits in `melt serve`, as `melt detect --retrain-every` makes them in batch.

Every ``detect.retrain_every`` of event time the served detectors are fitted again on the
``detect.train_window`` of stored data before the period (:mod:`melt.pipeline.rolling` explains
why: the baseline follows slow drift, and a long history outvotes a fault that stays on). The
period's first step is scored with the new fit, the same periods batch scores with its rolling
fits. A detector whose signal has too little history keeps its previous fit, so a server started
with models from ``melt train`` goes on with them until the history is long enough.

Each fit is saved under ``<data_dir>/models/<period start, ns>/`` (written under a temporary name
and renamed, so a crash leaves a whole fit or none) before its period's first step commits; a
restart loads the newest fit whose period began at or before the committed position. The last
:data:`KEPT_FITS` are kept.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from melt.core.bundle import SIGNALS
from melt.core.detector import Detector
from melt.core.errors import ConfigError, MeltError
from melt.core.progress import log
from melt.core.settings import Settings
from melt.core.timeutil import format_duration
from melt.pipeline.fitting import enough_training_data, fit_detectors, load_models, save_models
from melt.serve.durable import fsync_path

KEPT_FITS = 3


class Refitter:
    """Decides when the served detectors are refitted, fits them, and keeps the fits on disk.

    Args:
        settings: ``detect.retrain_every`` (``None``: never refit) and ``detect.train_window``;
            ``serve.step`` must divide ``retrain_every``.
        store: the segment store the history is read from.
        quiet: no log lines.
    """

    def __init__(self, settings: Settings, store: Any, quiet: bool = False) -> None:
        self.every = settings.detect.retrain_every
        self.window = settings.detect.train_window
        self.settings, self.store, self.quiet = settings, store, quiet
        self.root = Path(settings.serve.data_dir) / "models"
        self.period: pd.Timestamp | None = None  # the period the current fit serves
        self.seconds: float | None = None  # how long the last refit took
        self.error: str | None = None  # why the last refit failed
        self.check(settings)

    @staticmethod
    def check(settings: Settings) -> None:
        """Raises ConfigError: ``detect.retrain_every`` is not a whole number of ``serve.step``."""
        every, step = settings.detect.retrain_every, settings.serve.step
        if every is not None and (every < step or every % step != pd.Timedelta(0)):
            raise ConfigError(f"detect.retrain_every ({format_duration(every)}) must be a whole number of "
                              f"serve.step ({format_duration(step)}) in melt serve")

    @property
    def enabled(self) -> bool:
        return self.every is not None

    def due(self, start: pd.Timestamp) -> pd.Timestamp | None:
        """The period to refit for before scoring the step that starts at ``start``, or ``None``.

        The first step a server scores is scored with the models it was started with (or those
        restored): its period is the one they serve.
        """
        if self.every is None:
            return None
        period = start.floor(self.every)
        if self.period is None:
            self.period = period
            return None
        return period if period > self.period else None

    def refit(self, period: pd.Timestamp, models: dict[str, Detector]) -> dict[str, Detector]:
        """Models for ``period``: each detector refitted on the window before it, or kept as it is
        where that window holds too little of its signal; saved before they are returned. A refit
        that fails (a plugin's error, memory, a full disk) is logged and the current fit goes on:
        the stream must not stop on it."""
        try:
            return self._refit(period, models)
        except Exception as exc:  # noqa: BLE001 (any failure: keep scoring with what works)
            self.period = period
            self.error = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            log(f"refit for {period.isoformat()} failed, the current fit goes on: {self.error}", self.quiet,
                stage="melt warning")
            return models

    def _refit(self, period: pd.Timestamp, models: dict[str, Detector]) -> dict[str, Detector]:
        began = time.perf_counter()
        self.error = None
        history = self.store.bundle(period - self.window, period)
        names = [name for name, model in models.items() if enough_training_data(history, model.signal, self.settings)]
        if not names:
            log(f"refit for {period.isoformat()}: the {format_duration(self.window)} before holds too little data; "
                f"the current fit goes on", self.quiet, stage="melt serve")
            self.period = period
            return models
        fitted = fit_detectors(history, names, self.settings, quiet=True)
        merged = {**models, **fitted}
        self._save(period, merged)
        self.period = period
        self.seconds = time.perf_counter() - began
        kept = sorted(set(models) - set(fitted))
        rows = sum(history.rows(signal) for signal in SIGNALS)
        log(f"refit for {period.isoformat()}: {', '.join(sorted(fitted))} on {rows:,} rows of the "
            f"{format_duration(self.window)} before in {self.seconds:.1f}s"
            + (f"; {', '.join(kept)} kept" if kept else ""), self.quiet, stage="melt serve")
        return merged

    def restore(self, position: pd.Timestamp | None, step: pd.Timedelta) -> dict[str, Detector] | None:
        """After a restart at ``position`` (the end of the last committed step): the newest saved fit
        whose period began at or before it, or ``None`` when the models the server starts with
        serve on. Either way the next step is refitted for exactly when it would have been without
        the restart: when it starts a period after the one its predecessor was scored in."""
        if self.every is None or position is None:
            return None
        self.period = (position - step).floor(self.every)  # the period of the last step scored
        saved = sorted((int(p.name), p) for p in self.root.iterdir() if p.is_dir() and p.name.isdigit()
                       and int(p.name) <= position.value) if self.root.is_dir() else []
        if not saved:
            return None
        ns, path = saved[-1]
        try:
            models = load_models(path)
        except MeltError as exc:
            log(f"the saved fit {path} cannot be loaded ({exc}); the models the server started with go on",
                self.quiet, stage="melt warning")
            return None
        self.period = max(self.period, pd.Timestamp(ns, tz="UTC"))  # a fit saved for the next step's period
        return models

    def _save(self, period: pd.Timestamp, models: dict[str, Detector]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / str(period.value)
        temporary = self.root / f".{period.value}.tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        save_models(models, temporary)
        shutil.rmtree(final, ignore_errors=True)  # a fit of this period saved before a crash: replaced
        os.replace(temporary, final)
        fsync_path(self.root)
        fits = sorted((int(p.name), p) for p in self.root.iterdir() if p.is_dir() and p.name.isdigit())
        for _, old in fits[:-KEPT_FITS]:
            shutil.rmtree(old, ignore_errors=True)
