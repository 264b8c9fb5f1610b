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
    assert '"format_version": 5' in manifest and '"config_hash"' in manifest
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
        elif isinstance(value, np.ndarray | pd.Index):
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


@pytest.fixture(scope="module")
def written(split, tmp_path_factory) -> str:
    """The scored bundle as hive partitions, for the partition checks."""
    return str(split[1].write(tmp_path_factory.mktemp("parted") / "bundle", partitioned=True))


def _parts_of(detector, root: str) -> list[MeltBundle]:
    from melt.core.partitions import seen_seconds, service_part, services_of, shard_part
    from melt.core.schema import SIGNALS

    frames = [s for s in SIGNALS if s == detector.signal or s in detector.reads]
    if detector.partition == "service":  # each part told when the whole has rows, as a Dask run tells it
        seen = {detector.signal: seen_seconds(root, detector.signal)}
        return [service_part(root, frames, s, seen=seen) for s in services_of(root, detector.signal)]
    return [shard_part(root, frames, k, 3) for k in range(3)]


@pytest.mark.parametrize("name", [n for n in BUILTINS if build_detector(n).partition is not None])
def test_declared_partition_holds(name, fitted, split, written) -> None:
    """A detector's ``partition`` is a promise a Dask run relies on: scoring each part (one service,
    or a shard of whole traces, with only the frames it declares) and putting the rows in the score
    table's order gives the table the whole bundle gives."""
    from melt.pipeline.fitting import SCORE_ORDER

    detector = fitted[name]
    whole = detector.detect(split[1]).sort_values(SCORE_ORDER, kind="stable", ignore_index=True)
    parts = [detector.detect(part) for part in _parts_of(detector, written) if len(part.frame(detector.signal))]
    joined = pd.concat([p for p in parts if len(p)], ignore_index=True).sort_values(SCORE_ORDER, kind="stable",
                                                                                   ignore_index=True)
    assert len(joined) == len(whole)
    keys = ["timestamp", "detector", "service", "entity"]
    pd.testing.assert_frame_equal(joined[keys].astype(str), whole[keys].astype(str))
    np.testing.assert_allclose(joined["score"], whole["score"], rtol=0, atol=1e-6)
    assert joined["evidence"].map(repr).tolist() == whole["evidence"].map(repr).tolist()


@pytest.mark.parametrize("name", BUILTINS)
def test_fit_reads_only_declared_frames(name, fitted, split) -> None:
    """Fitted on its ``signal`` and ``reads`` alone, a detector scores as when fitted on the whole
    bundle: a Dask worker reads only those frames."""
    from melt.core.schema import SIGNALS

    detector = build_detector(name)
    frames = {s: getattr(split[0], s) if s == detector.signal or s in detector.reads else None for s in SIGNALS}
    alone = detector.fit_calibrated(MeltBundle(**frames, validate=False))
    a, b = alone.detect(split[1]), fitted[name].detect(split[1])
    assert len(a) == len(b)
    np.testing.assert_allclose(a["score"], b["score"], rtol=0, atol=1e-6)


def _daily_metrics(days: int = 3) -> MeltBundle:
    """Three services' metrics with a daily rhythm over ``days`` days (the STL path of the baselines)."""
    rng = np.random.default_rng(3)
    times = pd.date_range("2026-01-05", periods=days * 24 * 12, freq="5min", tz="UTC")
    frames = []
    for service in ("api", "cart", "db"):
        for metric, level in (("cpu_usage", 40.0), ("latency_p50", 12.0)):
            value = level * (1 + 0.3 * np.sin(2 * np.pi * times.hour.to_numpy() / 24)) + rng.normal(0, 1, len(times))
            frames.append(pd.DataFrame({"timestamp": times, "service": service, "metric": metric, "value": value}))
    return MeltBundle(metrics=pd.concat(frames, ignore_index=True).sort_values("timestamp", kind="stable",
                                                                              ignore_index=True))


def _quick(name: str) -> dict[str, int]:
    """A network's parameters for a test of its fit: two epochs."""
    return {"epochs": 2} if "epochs" in build_detector(name).param_defaults() else {}


FIT_BY_PARTS = [(n, "tiny", _quick(n)) for n in BUILTINS if build_detector(n).fit_rounds] + \
    [(n, "three_days", _quick(n)) for n in BUILTINS if build_detector(n).fit_rounds and build_detector(n).signal == "metrics"] + \
    [("iforest", "tiny", {"n_estimators": 5, "max_samples": 32})]  # the trees draw from a sample of the rows


@pytest.mark.parametrize(("name", "data", "params"), FIT_BY_PARTS)
def test_fit_by_parts_equals_fit(name, data, params, split, tmp_path) -> None:
    """Fitted part by part in map/reduce rounds (what a Dask run spreads over its workers, each
    part read from a partitioned bundle with the frames the detector declares: a service's rows,
    or a shard of whole traces for a detector scored by trace), a detector is the one
    ``fit_calibrated`` gives: the same state and the same scores."""
    from melt.core.detector import map_part
    from melt.core.partitions import service_part, services_of, shard_part
    from melt.core.schema import SIGNALS

    train, scored = split if data == "tiny" else (training_split(_daily_metrics(), 0.8), _daily_metrics())
    root = train.write(tmp_path / "train", partitioned=True)
    frames = [s for s in SIGNALS if s == build_detector(name).signal or s in build_detector(name).reads]
    if build_detector(name).partition == "trace":
        parts = [shard_part(root, frames, k, 3) for k in range(3)]
        assert all(len(p.traces) for p in parts)
    else:
        services = sorted(set().union(*(services_of(root, f) for f in frames)))
        parts = [service_part(root, frames, s) for s in services]
    whole = build_detector(name, params).fit_calibrated(train)
    by_parts = build_detector(name, params).fit_calibrated_by_parts(lambda d, step: [map_part(d, p, step) for p in parts])
    assert sorted(vars(by_parts)) == sorted(vars(whole))
    if data == "three_days" and name == "zscore":
        assert whole.profile_ is not None  # the seasonal path was taken
    if name == "iforest" and params:  # the trees drew from a sample (5 x 32 of 500 rows), not from every row
        from detectors.metrics.matrix import wide_metrics

        assert whole.forest_.max_samples_ == 32 and len(wide_metrics(train.metrics)) > 3 * 5 * 32
    if hasattr(whole, "miner_"):  # the log detectors: the same templates, the same tables
        assert by_parts.miner_.templates() == whole.miner_.templates()
        for key, value in whole.learned_state().items():
            if isinstance(value, pd.DataFrame | pd.Series):
                pd.testing.assert_frame_equal(pd.DataFrame(getattr(by_parts, key)), pd.DataFrame(value))
            elif isinstance(value, dict | tuple):
                assert getattr(by_parts, key) == value, key
    a, b = whole.detect(scored), by_parts.detect(scored)
    np.testing.assert_allclose(b["score"], a["score"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(by_parts.calibrator_.anchors_, whole.calibrator_.anchors_, rtol=0, atol=1e-12)
