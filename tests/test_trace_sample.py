"""The sample a trace network learns from: the same from any shards of whole traces, and the split it promises."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from detectors.trace_sample import ALL, SampleRule, trace_hashes, trace_keys
from melt.core.detector import map_part
from melt.core.partitions import shard_part, trace_shard
from melt.core.registry import build_detector
from melt.pipeline.fitting import training_split


def _keys(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = pd.Series([f"t{i:05d}" for i in range(n)])
    start = pd.Timestamp("2026-01-05", tz="UTC").value + rng.integers(0, 50, n) * 10**9  # many ties
    return pd.DataFrame({"trace_id": ids.to_numpy(dtype=object), "start": start, "hash": trace_hashes(ids, 7)})


@pytest.mark.parametrize(("n", "max_train", "sample"), [(1000, 100, 300), (1000, 5000, 5000), (1, 10, 10), (7, 2, 2)])
def test_the_rule_splits_as_promised(n, max_train, sample) -> None:
    keys = _keys(n)
    rule = SampleRule.of(keys, 0.2, max_train, sample)
    train, validation, read = rule.split(keys)
    ordered = keys.sort_values(["start", "hash"], ignore_index=True)
    cut = int(n * 0.8)
    assert rule.holdout_start == pd.Timestamp(ordered["start"].iloc[cut], tz="UTC")
    if cut == 0:  # too few to hold any out: everything trains, and validates
        assert train.sum() == min(n, max_train) and validation.sum() == min(n, max(max_train // 4, 1))
        return
    assert train.sum() == min(cut, max_train)
    assert validation.sum() == min(n - cut, max(max_train // 4, 1))
    assert read.sum() == min(cut, sample) + min(n - cut, max(sample // 4, 1))
    assert not (train & validation).any() and not ((train | validation) & ~read).any()
    tail = set(ordered["trace_id"].iloc[cut:])
    assert not set(keys["trace_id"][train]) & tail
    # validation: the first of the tail by start, the traces right after training
    assert set(keys["trace_id"][validation]) == set(ordered["trace_id"].iloc[cut:cut + max(max_train // 4, 1)])
    if n - cut > max(max_train // 4, 1):  # the training traces are those of smallest hash
        assert keys["hash"][train].max() < keys["hash"][~keys["trace_id"].isin(tail) & ~train].min()


def test_the_rule_is_the_same_from_shards_in_any_order() -> None:
    keys = _keys(2000, seed=3)
    shards = [keys[trace_shard(keys["trace_id"], k, 5)] for k in range(5)]
    whole = SampleRule.of(keys, 0.2, 150, 400)
    merged = SampleRule.of(pd.concat(shards[::-1], ignore_index=True), 0.2, 150, 400)
    assert merged == whole
    got = [np.concatenate(parts) for parts in zip(*(whole.split(s) for s in shards), strict=True)]
    order = np.concatenate([s.index.to_numpy() for s in shards])
    for mask, expected in zip(got, whole.split(keys.loc[order]), strict=True):
        np.testing.assert_array_equal(mask, expected)
    assert SampleRule.of(keys, 0.2, 10**6, 10**6).train_hash == ALL


def test_trace_keys_start_at_the_first_span(tiny_bundle) -> None:
    spans = tiny_bundle.traces
    keys = trace_keys(spans, 0).set_index("trace_id")
    first = spans.groupby(spans["trace_id"].astype(str))["start_time"].min()
    assert (keys["start"].reindex(first.index).to_numpy() == pd.DatetimeIndex(first).as_unit("ns").asi8).all()
    assert not np.array_equal(trace_hashes(first.index, 0), trace_hashes(first.index, 1))  # the seed draws


@pytest.mark.parametrize("name", ["gat_gae", "teg", "logtraceguard"])
def test_a_capped_fit_by_shards_learns_from_the_whole_fits_sample(name, tiny_bundle, tmp_path) -> None:
    """With fewer training traces allowed than the bundle has, the shards' rounds read the sample a
    whole fit reads, and the detector learns the same state and scores the same."""
    train = training_split(tiny_bundle, 0.5)
    params = {"epochs": 2, "max_train_traces": 40}
    assert train.traces["trace_id"].nunique() > 2 * params["max_train_traces"]
    root = train.write(tmp_path / "train", partitioned=True)
    detector = build_detector(name, params)
    frames = [detector.signal, *detector.reads]
    parts = [shard_part(root, frames, k, 3) for k in range(3)]
    whole = build_detector(name, params).fit_calibrated(train)
    by_parts = build_detector(name, params).fit_calibrated_by_parts(lambda d, step: [map_part(d, p, step) for p in parts])
    assert sorted(vars(by_parts)) == sorted(vars(whole))
    a, b = whole.detect(tiny_bundle), by_parts.detect(tiny_bundle)
    np.testing.assert_allclose(b["score"], a["score"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(by_parts.calibrator_.anchors_, whole.calibrator_.anchors_, rtol=0, atol=1e-12)
