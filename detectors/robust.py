"""Robust location/scale helpers shared by the built-in detectors (median and MAD, Hampel 1974)."""

from __future__ import annotations

import numpy as np
import pandas as pd

MAD_TO_SIGMA = 1.4826


def robust_baseline(values: pd.Series, keys: list[pd.Series] | pd.Series, rel_floor: float = 0.02,
                    abs_floor: float = 1e-6) -> pd.DataFrame:
    """Per group: median, MAD-based sigma (floored so constant series do not divide by zero), count."""
    frame = pd.DataFrame({"value": values.to_numpy(dtype=float)})
    keys = keys if isinstance(keys, list) else [keys]
    names = []
    for i, key in enumerate(keys):
        name = key.name if key.name is not None else f"k{i}"
        frame[name] = key.to_numpy()
        names.append(name)
    grouped = frame.groupby(names, sort=True, observed=True)["value"]
    median = grouped.median()
    mad = (frame["value"] - grouped.transform("median")).abs().groupby([frame[n] for n in names], observed=True).median()
    sigma = np.maximum(mad * MAD_TO_SIGMA, np.maximum(median.abs() * rel_floor, abs_floor))
    return pd.DataFrame({"median": median, "sigma": sigma, "count": grouped.count()})


def severity_direction(z: np.ndarray) -> np.ndarray:
    """'spike' above the baseline, 'drop' below it."""
    return np.where(z >= 0, "spike", "drop")
