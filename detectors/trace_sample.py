"""The traces a trace network learns from, drawn so that any shards of whole traces give the same ones.

A network trains on at most ``max_train_traces`` traces before the held-out tail (the latest
``validation_fraction`` of the traces by start) and validates on a quarter as many, the first of
the tail (early stopping, calibration: :class:`detectors.torch_model.HeldOutCalibrationMixin`).
What it learns besides its weights (vocabularies, per-operation baselines, log templates) comes
from a larger sample: ``SAMPLE_TRACES`` before the tail and the first quarter as many in it,
which holds every trace of a day of most systems. Which traces depends only on each trace's start
and a seeded hash of its id: before the cut the traces of smallest hash are kept, a bottom-k
sample, which merges from parts exactly (the "consistent sampling" of Broder, 1997; Cohen and
Kaplan's bottom-k sketches, 2007), and the training traces are the first of the sample's; in the
tail, the first by start. So a fit over shards of whole traces
(:meth:`melt.core.detector.Detector.fit_calibrated_by_parts`, which :mod:`melt.pipeline.dask_run`
spreads over a cluster) and a fit on the whole bundle learn from the same rows in the same order:

- round 0: each part's traces as (start, hash), 16 bytes a trace: where the tail starts and ends
  its validation, and the hash thresholds;
- round 1: each part's rows of the sampled traces (their spans, and the lines they logged for a
  detector that reads logs); the detector learns from them (:meth:`TraceSampleMixin.fit_sample`),
  sorted by time, then trace id.

Only the sample, bounded whatever the size of the bundle, reaches the process that trains.
Validating on a random quarter of the tail instead of its first traces raised `teg`'s false alarms
on the end-to-end synthetic benchmark (101 against 16 normal traces over 4 on one bundle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from melt.core.bundle import TIME_COLUMNS, MeltBundle
from melt.core.errors import PluginError

ALL = np.iinfo(np.uint64).max  # a hash threshold that keeps every trace
SAMPLE_TRACES = 20000  # traces before the tail read for what the network learns besides its weights


def trace_hashes(ids: pd.Index | pd.Series | np.ndarray, seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each trace id, the same in every process."""
    return pd.util.hash_array(pd.Series(np.asarray(ids, dtype=object)).astype(str).to_numpy(dtype=object),
                              hash_key=f"melt-sample{seed:05d}"[:16], categorize=False)


def trace_keys(spans: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Per trace of ``spans``: its id, start (its first span's, ns) and hash."""
    starts = spans.groupby(spans["trace_id"].astype(str), sort=False)["start_time"].min()
    return pd.DataFrame({"trace_id": starts.index.to_numpy(dtype=object),
                         "start": pd.DatetimeIndex(starts.to_numpy()).as_unit("ns").asi8,
                         "hash": trace_hashes(starts.index, seed)})


@dataclass(frozen=True)
class SampleRule:
    """Which traces a fit reads and trains on: the tail's first trace as (start, hash), whether
    the tail trains too (too few traces to hold any out), the largest hash kept before the tail
    (for training, and for the sample read), and the first trace after the tail's validation
    traces and after its traces read, as (start, hash) (``None``: to the end). ``cut is None``: no
    tail at all; validation is then the training set."""

    cut: tuple[int, int] | None
    tail_trains: bool
    train_hash: np.uint64
    sample_hash: np.uint64
    validation_end: tuple[int, int] | None
    sample_end: tuple[int, int] | None

    @classmethod
    def of(cls, keys: pd.DataFrame, validation_fraction: float, max_train: int, sample: int) -> SampleRule:
        """The rule for the traces ``keys`` (:func:`trace_keys` of every part): the latest
        ``validation_fraction`` by start are the tail (ties by hash); training keeps the
        ``max_train`` of smallest hash before it, validation the first quarter of that many of the
        tail (the traces right after training, as a forecast is checked); the sample read keeps
        ``sample`` (at least ``max_train``) before the tail and the first quarter of that many in it."""
        ordered = keys.sort_values(["start", "hash"], kind="stable", ignore_index=True)
        hashes = ordered["hash"]
        sample = max(sample, max_train)
        cut = int(len(ordered) * (1 - validation_fraction))

        def key_at(rank: int) -> tuple[int, int] | None:
            return (int(ordered["start"].iloc[rank]), int(hashes.iloc[rank])) if rank < len(ordered) else None

        if cut >= len(ordered):
            return cls(None, False, _kth(hashes, max_train), _kth(hashes, sample), None, None)
        before = hashes.iloc[:cut] if cut else hashes
        return cls(key_at(cut), cut == 0, _kth(before, max_train), _kth(before, sample),
                   key_at(cut + max(max_train // 4, 1)), key_at(cut + max(sample // 4, 1)))

    @property
    def holdout_start(self) -> pd.Timestamp | None:
        return None if self.cut is None else pd.Timestamp(self.cut[0], tz="UTC")

    def split(self, keys: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Whether each trace of ``keys`` trains, validates, and is in the sample read."""
        hashed = keys["hash"].to_numpy()
        if self.cut is None:
            train = hashed <= self.train_hash
            return train, train, hashed <= self.sample_hash
        start = keys["start"].to_numpy()

        def from_(key: tuple[int, int] | None) -> np.ndarray:
            if key is None:
                return np.zeros(len(keys), dtype=bool)
            return (start > key[0]) | ((start == key[0]) & (hashed >= np.uint64(key[1])))

        tail = from_(self.cut)
        before = np.ones(len(keys), dtype=bool) if self.tail_trains else ~tail
        return (before & (hashed <= self.train_hash), tail & ~from_(self.validation_end),
                (before & (hashed <= self.sample_hash)) | (tail & ~from_(self.sample_end)))


def _kth(hashes: pd.Series, k: int) -> np.uint64:
    """The k-th smallest hash (every trace up to it is kept), or ``ALL`` when there are no more than k."""
    if len(hashes) <= k:
        return ALL
    return np.uint64(np.partition(hashes.to_numpy(), k - 1)[k - 1])


class TraceSampleMixin:
    """A trace network's fit in two rounds over parts of whole traces (module doc).

    The detector implements :meth:`fit_sample`, which learns from the sampled traces and takes the
    positions of its training and validation traces from :meth:`sample_split`. A detector that
    learns from labelled faulty traces too names them in :meth:`labelled_traces`: they are left
    out of the split and always read (:meth:`sample_labelled`).
    """

    fit_rounds = 2
    trains_on_worker = True
    max_train_traces: int
    validation_fraction: float
    seed: int

    def fit_sample(self, sample: MeltBundle) -> None:  # pragma: no cover - abstract
        """Learn from ``sample``: the sampled traces' spans (and lines)."""
        raise NotImplementedError

    def labelled_traces(self, bundle: MeltBundle) -> np.ndarray:
        """Ids of the traces of ``bundle`` labelled faulty (none by default)."""
        return np.zeros(0, dtype=object)

    def fit_map(self, bundle: MeltBundle, step: int) -> Any:
        """Round 0: this part's unlabelled traces as (start, hash); round 1: its rows of the
        sampled and the labelled traces, and the labelled traces' ids."""
        keys = trace_keys(self.require(bundle), self.seed)  # type: ignore[attr-defined]
        labelled = self.labelled_traces(bundle)
        is_labelled = keys["trace_id"].isin(labelled).to_numpy()
        if step == 0:
            return keys.loc[~is_labelled, ["start", "hash"]].reset_index(drop=True)
        chosen = keys["trace_id"].to_numpy()[self.sample_rule_.split(keys)[2] | is_labelled]
        frames = {}
        for name in [self.signal, *self.reads]:  # type: ignore[attr-defined]
            frame = bundle.frame(name)
            if frame is not None and "trace_id" in frame.columns:
                frames[name] = frame[frame["trace_id"].astype(str).isin(chosen).to_numpy()]
        return frames, keys["trace_id"].to_numpy()[is_labelled]

    def fit_reduce(self, step: int, parts: list[Any]) -> None:
        """Round 0: the sample's rule (and ``holdout_start_``); round 1: the fit on the sample."""
        if step == 0:
            got = [p for p in parts if len(p)]
            if not got:
                raise PluginError(f"detector '{self.name}' has no unlabelled traces to learn from")  # type: ignore[attr-defined]
            rule = SampleRule.of(pd.concat(got, ignore_index=True), self.validation_fraction, self.max_train_traces,
                                 SAMPLE_TRACES)
            self.sample_rule_, self.holdout_start_ = rule, rule.holdout_start
            return
        frames = {}
        for name in [self.signal, *self.reads]:  # type: ignore[attr-defined]
            got = [sent[name] for sent, _ in parts if name in sent]
            if got:
                frame = pd.concat(got, ignore_index=True)
                order = np.lexsort((frame["trace_id"].astype(str).to_numpy(), frame[TIME_COLUMNS[name]].to_numpy()))
                frames[name] = frame.iloc[order].reset_index(drop=True)
        sample = MeltBundle(**frames, validate=False)
        keys = trace_keys(self.require(sample), self.seed)  # type: ignore[attr-defined]
        labelled = keys["trace_id"].isin(np.concatenate([np.zeros(0, dtype=object), *(ids for _, ids in parts)])).to_numpy()
        train, validation, _ = self.sample_rule_.split(keys)
        self._sample_flags = pd.DataFrame({"train": train & ~labelled, "validation": validation & ~labelled,
                                           "labelled": labelled}, index=keys["trace_id"].to_numpy())
        try:
            self.fit_sample(sample)
        finally:
            del self.sample_rule_, self._sample_flags

    def _flags(self, trace_ids: np.ndarray) -> pd.DataFrame:
        return self._sample_flags.reindex(pd.Series(np.asarray(trace_ids, dtype=object)).astype(str), fill_value=False)

    def sample_split(self, trace_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions in ``trace_ids`` (the sample's traces, in a graph's order) of the training and the validation traces."""
        flags = self._flags(trace_ids)
        return np.flatnonzero(flags["train"].to_numpy()), np.flatnonzero(flags["validation"].to_numpy())

    def sample_labelled(self, trace_ids: np.ndarray) -> np.ndarray:
        """Whether each of ``trace_ids`` is labelled faulty."""
        return self._flags(trace_ids)["labelled"].to_numpy(dtype=bool)
