"""The shared conformance test every built-in detector passes (after scikit-learn's common checks)."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pandas as pd
import pytest

from melt.core.bundle import MeltBundle
from melt.core.detector import SCORE_COLUMNS
from melt.core.errors import NotFittedError, PluginError
from melt.core.registry import build_detector, discover
from melt.pipeline.fitting import training_split

BUILTINS = sorted(name for name, info in discover()[0].items() if info.distribution == "melt-rca")


@pytest.fixture(scope="module")
def split(tiny_bundle: MeltBundle) -> tuple[MeltBundle, MeltBundle]:
    return training_split(tiny_bundle, 0.5), tiny_bundle


@pytest.fixture(scope="module")
def fitted(split) -> dict:
    train, _ = split
    return {name: build_detector(name).fit_calibrated(train) for name in BUILTINS}


@pytest.mark.parametrize("name", BUILTINS)
def test_score_frame_schema(name, fitted, split) -> None:
    scores = fitted[name].detect(split[1])
    assert list(scores.columns[: len(SCORE_COLUMNS)]) == list(SCORE_COLUMNS)
    assert len(scores) > 0
    assert np.isfinite(scores["score"]).all() and np.isfinite(scores["raw_score"]).all()
    assert str(scores["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert (scores["detector"] == name).all()
    assert scores["evidence"].map(lambda e: isinstance(e, dict) and "anomaly_type" in e and "expected_range" in e).all()


@pytest.mark.parametrize("name", BUILTINS)
def test_deterministic(name, split) -> None:
    train, test = split
    a = build_detector(name).fit_calibrated(train).detect(test)
    b = build_detector(name).fit_calibrated(train).detect(test)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("name", BUILTINS)
def test_save_load_gives_same_scores(name, fitted, split, tmp_path) -> None:
    fitted[name].save(tmp_path / name)
    manifest = (tmp_path / name / "manifest.json").read_text()
    assert '"format_version": 2' in manifest and '"config_hash"' in manifest
    loaded = type(fitted[name]).load(tmp_path / name)
    pd.testing.assert_frame_equal(loaded.detect(split[1]), fitted[name].detect(split[1]))


@pytest.mark.parametrize("name", BUILTINS)
def test_score_does_not_mutate_state(name, fitted, split) -> None:
    detector = fitted[name]
    before = copy.deepcopy({k: v for k, v in detector.learned_state().items() if k != "miner_"})
    templates = detector.miner_.templates() if hasattr(detector, "miner_") else None
    weights = {k: v.clone() for k, v in detector.network_.state_dict().items()} if hasattr(detector, "network_") else None
    estimators = {k: pickle.dumps(v) for k, v in detector.learned_state().items() if hasattr(v, "get_params")}
    detector.detect(split[1])
    after = {k: v for k, v in detector.learned_state().items() if k != "miner_"}
    for key, value in before.items():
        if isinstance(value, pd.DataFrame | pd.Series):
            pd.testing.assert_frame_equal(pd.DataFrame(after[key]), pd.DataFrame(value))
        elif key in estimators:  # a fitted scikit-learn estimator: compare what it learned
            assert pickle.dumps(after[key]) == estimators[key], key
        elif isinstance(value, np.ndarray):
            assert np.array_equal(after[key], value), key
        else:
            assert after[key] == value, key
    if templates is not None:
        assert detector.miner_.templates() == templates
    if weights is not None:
        assert all((detector.network_.state_dict()[k] == v).all() for k, v in weights.items())


@pytest.mark.parametrize("name", BUILTINS)
def test_bad_input_gives_clear_errors(name, split) -> None:
    detector = build_detector(name)
    with pytest.raises(NotFittedError, match=f"detector '{name}' is not fitted"):
        detector.detect(split[1])
    with pytest.raises(PluginError, match=f"detector '{name}' needs {detector.signal}"):
        detector.fit_calibrated(MeltBundle())
