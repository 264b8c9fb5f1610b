"""Fitting and scoring a set of detectors: the step every run shares (batch, rolling refits, benchmarks).

A detector whose signal has too little training data is skipped with a warning, not an error:
real collections lack signals (OnlineBoutique's faults have no logs).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from melt.core.bundle import MeltBundle
from melt.core.detector import Detector
from melt.core.errors import BundleError, MeltError, PluginError
from melt.core.progress import log, progress
from melt.core.registry import LeftOut, build_detector, get_plugin
from melt.core.settings import Settings


def training_split(bundle: MeltBundle, fraction: float) -> MeltBundle:
    """The leading ``fraction`` of the bundle's period, used to fit when no training data is given."""
    start, end = bundle.time_range()
    return bundle.slice_time(None, start + (end - start) * fraction)


def enough_training_data(train: MeltBundle, signal: str, settings: Settings) -> bool:
    """Whether ``train`` has enough rows of ``signal`` to fit a detector (``detect.min_train_rows``;
    change events need only be present: a quiet history is a fine baseline for them)."""
    frame = getattr(train, signal)
    return frame is not None and (signal == "events" or len(frame) >= settings.detect.min_train_rows)


def too_little(name: str, signal: str, rows: int, settings: Settings) -> LeftOut:
    """The note of a detector left out for too little training data."""
    return LeftOut(name, f"detector '{name}' has too little training data: {rows} {signal} rows "
                         f"(need {settings.detect.min_train_rows}; use --train or a longer bundle)")


def check_detector_settings(settings: Settings) -> None:
    """Build every detector the config sets parameters for, so that a bad value fails before any
    data is read (:class:`ConfigError` naming ``detectors.<name>.<key>``)."""
    for name, params in settings.detectors.items():
        build_detector(name, params)


def fit_detectors(train: MeltBundle, names: list[str], settings: Settings, quiet: bool = False,
                  skipped: list[LeftOut] | None = None) -> dict[str, Detector]:
    """Build each detector from its ``detectors.<name>`` settings and fit it with calibration.

    A detector whose signal has no or too little training data (``detect.min_train_rows``) is left
    out with one warning line, and the others go on: a real collection often lacks a signal (the
    OnlineBoutique faults have no logs). So is a detector whose ``fit`` raises: one plugin's bug
    must not cost the run. Each is also appended to ``skipped``.

    Raises:
        ConfigError: a detector's parameters are not valid (checked before anything is fitted).
        PluginError: not one of ``names`` could be fitted.
    """
    detectors = {name: build_detector(name, settings.detector_params(name)) for name in names}
    models: dict[str, Detector] = {}
    short: list[LeftOut] = []
    for name, detector in progress(detectors.items(), "fitting", quiet, total=len(detectors)):
        frame = getattr(train, detector.signal)
        if not enough_training_data(train, detector.signal, settings):
            short.append(too_little(name, detector.signal, 0 if frame is None else len(frame), settings))
            continue
        began = time.perf_counter()
        try:
            models[name] = detector.fit_calibrated(train)
        except Exception as exc:  # a plugin's failure drops that plugin, not the run
            short.append(dropped(name, "fit", exc))
            continue
        log(f"fitted {name} on {len(frame)} {detector.signal} rows in {time.perf_counter() - began:.1f}s", quiet)
    if not models:
        raise PluginError(str(short[0]) if len(short) == 1 else f"no detector could be fitted: {short[0]}")
    for note in short:
        log(f"skipped {note}", quiet, stage="melt warning")
    if skipped is not None:
        skipped.extend(short)
    return models


def dropped(name: str, step: str, exc: BaseException) -> LeftOut:
    """The one-line note of a detector that raised in ``step`` and was left out."""
    reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200] if str(exc) else type(exc).__name__
    return LeftOut(name, f"detector '{name}' failed to {step} and was left out ({reason})")


def save_models(models: dict[str, Detector], out_dir: str | Path) -> Path:
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        model.save(root / name)
    (root / "models.json").write_text(json.dumps({"detectors": sorted(models)}, indent=2) + "\n")
    return root


def model_names(model_dir: str | Path) -> list[str]:
    """The detectors a ``melt train`` directory holds (its ``models.json``).

    Raises:
        BundleError: no such directory, no ``models.json``, or one that is not a model index.
    """
    root = Path(model_dir)
    index = root / "models.json"
    if not index.is_file():
        raise BundleError(f"{root}: not a model directory (no models.json; create one with 'melt train')")
    try:
        available = json.loads(index.read_text())["detectors"]
        if not isinstance(available, list) or not all(isinstance(n, str) for n in available):
            raise TypeError("'detectors' is not a list of names")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BundleError(f"{index}: not a melt model index ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    return available


def load_models(model_dir: str | Path, names: list[str] | None = None) -> dict[str, Detector]:
    root = Path(model_dir)
    available = model_names(root)
    wanted = available if names is None else names
    missing = [n for n in wanted if n not in available]
    if missing:
        raise PluginError(f"{root}: has no fitted model for '{missing[0]}' (it has: {', '.join(available)})")
    models = {}
    for name in wanted:
        cls = get_plugin(name).cls
        try:
            models[name] = cls.load(root / name)
        except MeltError:
            raise
        except Exception as exc:  # a damaged state file, a pickle of another version
            raise PluginError(f"{root / name}: cannot load the saved '{name}' model "
                              f"({type(exc).__name__}: {exc})".splitlines()[0]) from None
    return models


SCORE_ORDER = ["timestamp", "detector", "service", "entity"]


def score_all(models: dict[str, Detector], bundle: MeltBundle, quiet: bool = False,
              skipped: list[LeftOut] | None = None, seconds: dict[str, float] | None = None) -> pd.DataFrame:
    """Every model's calibrated scores of ``bundle``, in one frame.

    A model whose ``detect`` raises is left out with one warning line (appended to ``skipped``),
    and the others' scores stand. ``seconds`` receives each model's scoring time.

    Raises:
        PluginError: every model failed.
    """
    frames, failed = [], []
    for name, model in progress(models.items(), "scoring", quiet, total=len(models)):
        began = time.perf_counter()
        try:
            frame = model.detect(bundle)
        except Exception as exc:  # a plugin's failure drops that plugin, not the run
            failed.append(dropped(name, "score", exc))
            log(f"skipped {failed[-1]}", quiet, stage="melt warning")
            continue
        took = time.perf_counter() - began
        if seconds is not None:
            seconds[name] = took
        log(f"scored {name}: {len(frame)} rows in {took:.1f}s", quiet)
        frames.append(frame)
    if failed and len(failed) == len(models):
        raise PluginError(f"no detector could score the data: {failed[0]}")
    if skipped is not None:
        skipped.extend(failed)
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["timestamp", "service", "detector", "entity", "score", "evidence", "raw_score"])
    # one order, whatever the models' order or the span of data scored at once: a stream that scores
    # step by step and concatenates gets the very table a batch run gets (ties are then broken alike)
    return pd.concat(frames, ignore_index=True).sort_values(SCORE_ORDER, kind="stable", ignore_index=True)
