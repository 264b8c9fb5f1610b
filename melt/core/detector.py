"""The detector contract every plugin implements (see the architecture doc).

A plugin writes ``fit`` and ``score``; the base class adds calibration, parameter handling and
persistence. Rules, after scikit-learn and PyOD: the constructor only stores keyword parameters,
learned state ends in ``_`` and is set in ``fit``, ``score`` never changes fitted state, and higher
scores mean more anomalous.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from melt.core.bundle import MeltBundle
from melt.core.calibration import ScoreCalibrator
from melt.core.errors import BundleError, NotFittedError, PluginError
from melt.core.version import __version__

SCORE_COLUMNS: tuple[str, ...] = ("timestamp", "service", "detector", "entity", "score", "evidence")
# 2: log templates saved as templates.json by the shapes parser (issue 28), not drain3_state.json;
# 3: teg's node spreads and component calibrators, logtraceguard's PU z-score buffers;
# 4: logtraceguard's rarity scorer (log-ms timing inputs, an unlogged-error input, new buffers);
# 5: logtraceguard's input tables gain the failed and callee-failed rows, and a by-status buffer
FORMAT_VERSION = 5


class Detector:
    """Base class of every detector plugin.

    Subclasses set ``name`` (the entry-point name) and ``signal`` and implement :meth:`fit` and
    :meth:`score`. ``score`` returns one row per scored unit with the columns of
    :data:`SCORE_COLUMNS`: ``evidence`` is a dict that ends up in the report (include
    ``value``, ``expected_range`` and ``anomaly_type`` where they make sense). A row that scores a
    call edge rather than a service carries the extra column ``caller``, with the callee as
    ``service`` (:mod:`detectors.edges`): the ranking decides which end the anomaly belongs to.
    """

    name: ClassVar[str] = ""
    signal: ClassVar[str] = ""
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}  # parameter -> allowed strings, checked when built
    reads: ClassVar[tuple[str, ...]] = ()  # frames besides ``signal`` that fit and score read
    # The key by which ``score`` is local, so a Dask run scores each part on its own worker
    # (melt.pipeline.dask_run): "service" = scoring the rows of one service (of ``signal`` and
    # ``reads``) gives the rows the whole bundle gives for that service; "trace" = the same for a
    # set of whole traces and the lines they logged; None = scored whole, on one worker.
    partition: ClassVar[str | None] = None
    # > 0: fit splits by ``partition`` too, in this many map/reduce rounds (fit_map on each part's
    # training rows, fit_reduce over their results); see fit_calibrated_by_parts
    fit_rounds: ClassVar[int] = 0
    # a fit by parts whose last round trains a network on what the parts sent: a Dask run pools
    # its rounds on a worker (the network trains there), not on the client
    trains_on_worker: ClassVar[bool] = False

    # ----------------------------------------------------------- to implement
    def fit(self, bundle: MeltBundle) -> Self:
        """Learn from ``bundle``. A detector that fits by parts (``fit_rounds``) gets
        :meth:`fit_in_rounds`, so that a whole fit and a fit by parts learn one state."""
        if self.fit_rounds:
            return self.fit_in_rounds(bundle)
        raise NotImplementedError  # pragma: no cover - abstract

    def score(self, bundle: MeltBundle) -> pd.DataFrame:  # pragma: no cover - abstract
        raise NotImplementedError

    # ----------------------------------------------------------- parameters
    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        """Constructor keyword parameters and their defaults."""
        signature = inspect.signature(cls.__init__)
        kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return {p.name: p.default for p in signature.parameters.values() if p.name != "self" and p.kind in kinds}

    def get_params(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.param_defaults()}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # ----------------------------------------------------------- fitting + calibration
    def is_fitted(self) -> bool:
        return getattr(self, "calibrator_", None) is not None

    def check_is_fitted(self) -> None:
        if not self.is_fitted():
            raise NotFittedError(f"detector '{self.name}' is not fitted: call fit_calibrated() or load a model")

    def require(self, bundle: MeltBundle) -> pd.DataFrame:
        """The frame of this detector's signal, or a one-line :class:`PluginError`."""
        frame = getattr(bundle, self.signal, None)
        if frame is None:
            raise PluginError(f"detector '{self.name}' needs {self.signal} but the bundle has no {self.signal}.parquet")
        return frame

    def fit_calibrated(self, bundle: MeltBundle) -> Self:
        """Fit, then learn the calibration from the scores of the training data."""
        self.require(bundle)
        self.fit(bundle)
        self.calibrator_ = ScoreCalibrator().fit(self.calibration_scores(bundle))
        return self

    def fit_map(self, bundle: MeltBundle, step: int) -> Any:  # pragma: no cover - with fit_rounds
        """Round ``step`` of a fit by parts, on one service's training rows: their statistics
        (small: per-series tables, never the rows). Reads the state the earlier rounds pooled."""
        raise NotImplementedError

    def fit_reduce(self, step: int, parts: list[Any]) -> None:  # pragma: no cover - with fit_rounds
        """Pool round ``step``'s :meth:`fit_map` results into the detector's state."""
        raise NotImplementedError

    def fit_in_rounds(self, bundle: MeltBundle) -> Self:
        """:meth:`fit` as the rounds of a fit by parts over one part, ``bundle``: a detector that
        fits by parts and fits this way learns one state, whatever the parts."""
        self.require(bundle)
        for step in range(self.fit_rounds):
            self.fit_reduce(step, [self.fit_map(bundle, step)])
        return self

    def fit_calibrated_by_parts(self, map_parts: Callable[[Detector, int], list[Any]]) -> Self:
        """What :meth:`fit_calibrated` gives on the union of a set of parts (one service's rows
        each), fitted in ``fit_rounds`` map/reduce rounds, then calibrated on every part's scores.

        ``map_parts(detector, step)`` gives :func:`map_part` of each part, in one process or on the
        workers of a Dask run (:mod:`melt.pipeline.dask_run`), which passes a copy of ``detector``.
        """
        if not self.fit_rounds:
            raise PluginError(f"detector '{self.name}' does not fit by parts")
        for step in range(self.fit_rounds):
            self.fit_reduce(step, map_parts(self, step))
        self.calibrator_ = ScoreCalibrator().fit(np.concatenate([np.zeros(0), *map_parts(self, CALIBRATE)]))
        return self

    def calibration_scores(self, bundle: MeltBundle) -> np.ndarray:
        """Raw scores the calibration is learned from: by default the training data's own scores.

        Detectors that fit their training data closely (neural networks) override this to return
        scores of data held out from ``fit``, or their thresholds come out too low.
        """
        return self._checked(self.score(bundle))["score"].to_numpy()

    def score_floor(self, raw: np.ndarray) -> np.ndarray | None:
        """Calibrated scores that raw scores earn by their own meaning, whatever the training held.

        Quantile calibration only says how rare a score was in training. A training history that
        holds earlier faults (a rolling refit's unlabelled window) puts the top of the scale at their
        scores, and the next fault like them is then never rarer than the history. A detector whose
        raw score has an absolute meaning (a share of calls that changed) overrides this; the
        calibrated score is the larger of the two. ``None``: no floor.
        """
        return None

    # ----------------------------------------------------------- online learning between stream steps
    def observe(self, bundle: MeltBundle, since: pd.Timestamp, until: pd.Timestamp) -> None:
        """Learn from ``bundle``'s rows in ``[since, until)`` after a stream step scored them (default: nothing).

        For detectors whose score depends on what they have seen so far (``zscore``'s surprise): a
        stream that scores step by step calls this so each step sees what a batch run's one frame
        sees. Only the state :meth:`online_state` returns may change.
        """

    def online_state(self) -> dict[str, Any] | None:
        """What :meth:`observe` changed, for a stream's snapshot (``None``: nothing)."""
        return None

    def restore_online(self, state: dict[str, Any]) -> None:
        """Put back :meth:`online_state`'s output."""

    def detect(self, bundle: MeltBundle) -> pd.DataFrame:
        """Score ``bundle`` and calibrate: ``score`` is calibrated, ``raw_score`` is what ``score`` gave."""
        self.check_is_fitted()
        self.require(bundle)
        out = self._checked(self.score(bundle))
        out["raw_score"] = out["score"]
        out["score"] = self.calibrate(out["raw_score"].to_numpy())
        return out

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Raw scores on the shared calibrated scale: the learned map, raised to :meth:`score_floor`."""
        self.check_is_fitted()
        calibrated = self.calibrator_.transform(raw)
        floor = self.score_floor(np.asarray(raw, dtype=float))
        return calibrated if floor is None else np.fmax(calibrated, floor)

    def _checked(self, frame: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in SCORE_COLUMNS if c not in frame.columns]
        if missing:
            raise PluginError(f"detector '{self.name}' returned a score frame without column '{missing[0]}'")
        frame = frame.loc[:, list(SCORE_COLUMNS) + [c for c in frame.columns if c not in SCORE_COLUMNS]].copy()
        frame["score"] = frame["score"].astype(float)
        if len(frame) and not np.isfinite(frame["score"].to_numpy()).all():
            raise PluginError(f"detector '{self.name}' returned non-finite scores")
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
        return frame.reset_index(drop=True)

    # ----------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Save as a directory: ``manifest.json``, ``params.json``, ``calibration.json`` and state."""
        self.check_is_fitted()
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        params = self.get_params()
        params_json = json.dumps(params, sort_keys=True, default=str)
        manifest = {
            "format_version": FORMAT_VERSION,
            "detector": self.name,
            "signal": self.signal,
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "melt_version": __version__,
            "libraries": _library_versions(),
            "config_hash": hashlib.sha256(params_json.encode()).hexdigest()[:16],
        }
        (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        (root / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True, default=str) + "\n")
        (root / "calibration.json").write_text(json.dumps(self.calibrator_.to_dict()) + "\n")
        self._save_state(root)
        return root

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Load a directory written by :meth:`save`."""
        root = Path(path)
        manifest_file = root / "manifest.json"
        if not manifest_file.is_file():
            raise BundleError(f"{root}: not a saved detector (no manifest.json)")
        manifest = json.loads(manifest_file.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise PluginError(f"{root}: model format {manifest.get('format_version')} is not supported "
                              f"(want {FORMAT_VERSION}); fit it again with 'melt train'")
        if cls.name and manifest.get("detector") != cls.name:
            raise PluginError(f"{root}: holds detector '{manifest.get('detector')}', not '{cls.name}'")
        params = json.loads((root / "params.json").read_text())
        detector = cls(**params)
        detector._load_state(root)
        detector.calibrator_ = ScoreCalibrator.from_dict(json.loads((root / "calibration.json").read_text()))
        return detector

    def learned_state(self) -> dict[str, Any]:
        """Learned attributes (public names ending in ``_``), except the calibrator."""
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_") and k != "calibrator_"}

    def _save_state(self, root: Path) -> None:
        """Default persistence: joblib of the learned attributes. Torch/Drain3 detectors override."""
        import joblib

        joblib.dump(self.learned_state(), root / "state.joblib")

    def _load_state(self, root: Path) -> None:
        import joblib

        for key, value in joblib.load(root / "state.joblib").items():
            setattr(self, key, value)


CALIBRATE = -1  # map_part's step that gives the part's calibration scores


def map_part(detector: Detector, bundle: MeltBundle, step: int) -> Any:
    """One part's share of round ``step`` of :meth:`Detector.fit_calibrated_by_parts`."""
    return detector.calibration_scores(bundle) if step == CALIBRATE else detector.fit_map(bundle, step)


def _library_versions() -> dict[str, str]:
    import sys
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for package in ("numpy", "pandas", "scikit-learn", "torch", "torch-geometric", "drain3"):
        module = package.replace("-", "_").replace("scikit_learn", "sklearn")
        if module in sys.modules:
            try:
                versions[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                pass
    return versions


def empty_scores() -> pd.DataFrame:
    """An empty score frame with the contract's columns and dtypes."""
    return pd.DataFrame(
        {
            "timestamp": pd.Series([], dtype="datetime64[ns, UTC]"),
            "service": pd.Series([], dtype="string"),
            "detector": pd.Series([], dtype="string"),
            "entity": pd.Series([], dtype="string"),
            "score": pd.Series([], dtype="float64"),
            "evidence": pd.Series([], dtype=object),
        }
    )
