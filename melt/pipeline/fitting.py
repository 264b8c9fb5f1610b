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
from melt.core.errors import BundleError, PluginError
from melt.core.progress import log
from melt.core.registry import build_detector, get_plugin
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


def fit_detectors(train: MeltBundle, names: list[str], settings: Settings, quiet: bool = False,
                  skipped: list[str] | None = None) -> dict[str, Detector]:
    """Build each detector from its ``detectors.<name>`` settings and fit it with calibration.

    A detector whose signal has no or too little training data (``detect.min_train_rows``) is left
    out with one warning line, and the others go on: a real collection often lacks a signal (the
    OnlineBoutique faults have no logs). Each skip is also appended to ``skipped``.

    Raises:
        PluginError: not one of ``names`` had enough training data.
    """
    models, short = {}, []
    for name in names:
        detector = build_detector(name, settings.detector_params(name))
        frame = getattr(train, detector.signal)
        if not enough_training_data(train, detector.signal, settings):
            rows = 0 if frame is None else len(frame)
            short.append(f"detector '{name}' has too little training data: {rows} {detector.signal} rows "
                         f"(need {settings.detect.min_train_rows})")
            continue
        began = time.perf_counter()
        models[name] = detector.fit_calibrated(train)
        log(f"fitted {name} on {len(frame)} {detector.signal} rows in {time.perf_counter() - began:.1f}s", quiet)
    if not models:
        raise PluginError(f"{short[0] if len(short) == 1 else 'no detector has enough training data'}; "
                          "use --train or a longer bundle")
    for note in short:
        log(f"skipped {note}", quiet, stage="melt warning")
    if skipped is not None:
        skipped.extend(short)
    return models


def save_models(models: dict[str, Detector], out_dir: str | Path) -> Path:
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        model.save(root / name)
    (root / "models.json").write_text(json.dumps({"detectors": sorted(models)}, indent=2) + "\n")
    return root


def load_models(model_dir: str | Path, names: list[str] | None = None) -> dict[str, Detector]:
    root = Path(model_dir)
    index = root / "models.json"
    if not index.is_file():
        raise BundleError(f"{root}: not a model directory (no models.json; create one with 'melt train')")
    available = json.loads(index.read_text())["detectors"]
    wanted = available if names is None else names
    missing = [n for n in wanted if n not in available]
    if missing:
        raise PluginError(f"{root}: has no fitted model for '{missing[0]}' (it has: {', '.join(available)})")
    return {name: get_plugin(name).cls.load(root / name) for name in wanted}


def score_all(models: dict[str, Detector], bundle: MeltBundle, quiet: bool = False) -> pd.DataFrame:
    frames = []
    for name, model in models.items():
        began = time.perf_counter()
        frame = model.detect(bundle)
        log(f"scored {name}: {len(frame)} rows in {time.perf_counter() - began:.1f}s", quiet)
        frames.append(frame)
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["timestamp", "service", "detector", "entity", "score", "evidence", "raw_score"])
