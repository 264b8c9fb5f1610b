"""Share of WARN/ERROR log lines per (service, minute), against its training mean and spread.

A deliberately small detector that shows the whole plugin contract: keyword-only parameters
stored as-is, learned state ending in ``_``, ``fit`` learns, ``score`` only reads, and the score
frame columns (timestamp, service, detector, entity, score, evidence).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from melt import Detector, MeltBundle, parse_duration  # the public API: stable whatever moves inside melt


class ErrorShareDetector(Detector):
    """Flags windows where a service logs an unusual share of WARN/ERROR lines.

    Args:
        window: bucket width, e.g. "1m".
    """

    name = "error_share"
    signal = "logs"

    def __init__(self, window: str = "1m") -> None:
        self.window = window

    def _shares(self, bundle: MeltBundle) -> pd.DataFrame:
        logs = self.require(bundle)
        bad = logs["level"].isin(["WARN", "ERROR", "FATAL"])
        frame = pd.DataFrame({"service": logs["service"], "bucket": logs["timestamp"].dt.floor(parse_duration(self.window)), "bad": bad})
        return frame.groupby(["service", "bucket"], observed=True)["bad"].agg(["mean", "size"]).reset_index()

    def fit(self, bundle: MeltBundle) -> ErrorShareDetector:
        shares = self._shares(bundle)
        stats = shares.groupby("service", observed=True)["mean"].agg(["mean", "std"]).fillna(0.0)
        self.mean_ = stats["mean"].to_dict()
        self.std_ = stats["std"].to_dict()
        return self

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        shares = self._shares(bundle)
        mean = shares["service"].map(self.mean_).fillna(0.0).to_numpy()
        std = shares["service"].map(self.std_).fillna(0.0).to_numpy() + 0.01
        z = (shares["mean"].to_numpy() - mean) / std
        evidence = [{"value": round(float(v), 4), "expected_range": [0.0, round(float(m + 3 * s), 4)],
                     "anomaly_type": "error_share"} for v, m, s in zip(shares["mean"], mean, std, strict=True)]
        return pd.DataFrame({"timestamp": shares["bucket"], "service": shares["service"], "detector": self.name,
                             "entity": "warn_error_share", "score": np.maximum(z, 0.0), "evidence": evidence})
