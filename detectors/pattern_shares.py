"""Pattern shares per operation against training: the scoring core of Nezha's expected patterns.

Nezha (Yu et al., FSE 2023) locates a fault where an operation's expected event patterns vanish or
unexpected ones appear. The events are log templates for :mod:`detectors.logs.log_patterns` and
the spans a call made for :mod:`detectors.traces.call_patterns`; the scoring is the same and lives
here. A *unit* is one call of an operation (one span), or one trace, or one line. For each
(service, operation, window) and pattern, the share of units that hold the pattern is compared
with the share in training; a pair ``A -> B`` (B right after A in the same unit) counts among the
units that hold A, so a B that always followed A and stops (the code now throws after A) is a
full change however rare A is. The score is the lower end of the change's 95% interval: how much
of the operation's calls changed, counting only what the data support.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PAIR = " -> "
CELL = ["service", "op", "bucket"]


def consecutive_pairs(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``A -> B`` for each pattern B that follows A in the same unit (``frame`` sorted by ``keys`` and order)."""
    if len(frame) < 2:
        return frame.iloc[:0][keys + ["pattern"]]
    same = np.ones(len(frame), dtype=bool)
    for key in keys:
        values = frame[key].to_numpy()
        same[1:] &= values[1:] == values[:-1]
    same[0] = False
    previous = np.roll(frame["pattern"].to_numpy(), 1)
    return frame[same][keys].assign(pattern=previous[same] + PAIR + frame["pattern"].to_numpy()[same])


def fit_baseline(events: pd.DataFrame, units: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame]:
    """Training units per (service, op), and units holding each pattern per (service, op, pattern)."""
    base_units = units.groupby(["service", "op"], observed=True).size().rename("base_n")
    baseline = events.groupby(["service", "op", "pattern"], observed=True).size().rename("base_k").reset_index()
    return base_units, baseline


def pattern_cells(events: pd.DataFrame, units: pd.DataFrame, base_units: pd.Series, baseline: pd.DataFrame,
                  leave_out: bool, min_units: int) -> pd.DataFrame:
    """Per (service, op, bucket, pattern): units with the pattern ``k``, units ``n``, and the baseline's.

    Every baseline pattern of an active operation is a cell too (a vanished pattern has no event).
    ``leave_out`` takes each cell's own counts out of the baseline (for data that is the training set).
    """
    if units.empty or base_units.empty:
        return pd.DataFrame(columns=[*CELL, "pattern", "n", "base_n", "k", "base_k"])
    counts = units.groupby(CELL, observed=True).size().rename("n").reset_index()
    counts = counts.join(base_units, on=["service", "op"], how="inner")  # unseen in training: no baseline
    if leave_out:
        counts["base_n"] = counts["base_n"] - counts["n"]
        counts = counts[counts["base_n"] > 0]
    counts = counts[counts["n"] >= min_units]
    seen = events.groupby(CELL + ["pattern"], observed=True).size().rename("k").reset_index()
    expected = counts.merge(baseline, on=["service", "op"], how="inner")[CELL + ["pattern"]]
    cells = pd.concat([seen[CELL + ["pattern"]], expected]).drop_duplicates()
    cells = (cells.merge(counts, on=CELL, how="inner")
             .merge(seen, on=CELL + ["pattern"], how="left")
             .merge(baseline, on=["service", "op", "pattern"], how="left"))
    cells["k"] = cells["k"].fillna(0)
    cells["base_k"] = cells["base_k"].fillna(0)
    if leave_out:
        cells["base_k"] = cells["base_k"] - cells["k"]
    return given_first(cells, CELL, min_units)


def share_change(cells: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Change of each cell's share ``k/n`` from ``base_k/base_n``, and its pooled standard error.

    The two-proportion z-test's terms, with add-half smoothing so that empty cells stay finite.
    """
    k, n = cells["k"].to_numpy(float), cells["n"].to_numpy(float)
    base_k, base_n = cells["base_k"].to_numpy(float), cells["base_n"].to_numpy(float)
    share, base_share = (k + 0.5) / (n + 1), (base_k + 0.5) / (base_n + 1)
    pooled = (k + base_k + 1) / (n + base_n + 2)
    return share - base_share, np.sqrt(pooled * (1 - pooled) * (1 / (n + 1) + 1 / (base_n + 1)))


def confident_change(change: np.ndarray, error: np.ndarray, confidence_z: float) -> np.ndarray:
    """The lower confidence bound of the absolute change in share (0 when the change is not significant)."""
    return np.clip(np.abs(change) - confidence_z * error, 0.0, None)


def change_kind(base_k: np.ndarray, z: np.ndarray) -> np.ndarray:
    """new_pattern | pattern_vanished | pattern_grew."""
    return np.where(base_k == 0, "new_pattern", np.where(z < 0, "pattern_vanished", "pattern_grew"))


def given_first(cells: pd.DataFrame, cell: list[str], min_units: int) -> pd.DataFrame:
    """A pair's share counts among the units that hold its first pattern, not among all the calls.

    Nezha's expected patterns: when A is always followed by B, a B that no longer follows A means
    the code path broke between them, however rarely the request mix reaches A. Pairs whose first
    pattern was seen in fewer than ``min_units`` units are dropped.
    """
    codes, patterns = pd.factorize(cells["pattern"])
    parts = pd.Series(patterns, dtype=object).astype(str).str.split(PAIR, n=1, regex=False)  # once per pattern
    is_pair = (parts.str.len() == 2).to_numpy()[codes]
    if not is_pair.any():
        return cells
    singles = cells.loc[~is_pair, cell + ["pattern", "k", "base_k"]].rename(
        columns={"pattern": "first", "k": "first_n", "base_k": "first_base_n"})
    pairs = cells[is_pair].assign(first=parts.str[0].to_numpy()[codes[is_pair]])
    pairs = pairs.merge(singles, on=cell + ["first"], how="left")
    pairs["n"] = pairs["first_n"].fillna(0)
    pairs["base_n"] = pairs["first_base_n"].fillna(0)
    pairs = pairs[(pairs["n"] >= min_units) & (pairs["base_n"] > 0)]
    return pd.concat([cells[~is_pair], pairs[cells.columns]], ignore_index=True)
