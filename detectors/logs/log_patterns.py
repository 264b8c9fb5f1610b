"""Log-pattern shift per service: templates and template pairs that appear in, or vanish from, its traces.

Nezha (Yu et al., FSE 2023, "Nezha: Interpretable Fine-Grained Root Causes Analysis for
Microservices on Multi-modal Observability Data") locates a fault in the service whose *expected*
event patterns vanish, or whose unexpected ones appear, between a fault-free and a faulty phase.
This detector keeps that idea and makes it a streaming score: a pattern is a log template, or a pair
of templates logged one after the other by the same service in the same trace. For each (service,
window) it compares the share of the service's traces that contain each pattern with the share seen
in training, with a two-proportion z-test, so the score does not move with traffic volume. Lines
without a trace id are units of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd

from detectors.logs.templates import TemplateMiner
from melt.bundle import MeltBundle
from melt.detector import Detector, empty_scores
from melt.timeutil import parse_duration

PAIR = " -> "


class LogPatternDetector(Detector):
    """Templates and template pairs whose per-trace share changed, per (service, window).

    Args:
        window: bucket width.
        sim_th: Drain similarity threshold.
        depth: Drain parse-tree depth.
        pairs: also score consecutive template pairs within a (trace, service), Nezha's event pairs.
        min_units: windows where a service has fewer traces (or trace-less lines) are not scored.
        masks: ``[regex, token]`` masking rules; ``None`` uses the built-in set.
    """

    name = "log_patterns"
    signal = "logs"

    def __init__(self, window: str = "1m", sim_th: float = 0.4, depth: int = 4, pairs: bool = True,
                 min_units: int = 3, masks: list[list[str]] | None = None) -> None:
        self.window = window
        self.sim_th = sim_th
        self.depth = depth
        self.pairs = pairs
        self.min_units = min_units
        self.masks = masks

    def _events(self, logs: pd.DataFrame, template: np.ndarray, bucket: pd.Series | None) -> pd.DataFrame:
        """One row per (service, unit, pattern[, bucket]) present, plus one with pattern ``""`` per unit.

        A unit is what one service logged in one trace, or a single line without a trace id.
        """
        unit = pd.Series("line:" + np.arange(len(logs)).astype(str), index=logs.index, dtype=object)
        if "trace_id" in logs.columns:
            value = logs["trace_id"].astype(object)
            unit = unit.where(~(value.notna() & (value != "")), value)
        frame = pd.DataFrame({"service": logs["service"].to_numpy(), "unit": unit.to_numpy(),
                              "pattern": template, "timestamp": logs["timestamp"].to_numpy()})
        if bucket is not None:
            frame["bucket"] = bucket.to_numpy()
        keys = ["service", "unit"] + (["bucket"] if bucket is not None else [])
        ordered = frame.sort_values(keys + ["timestamp"], kind="stable")
        same = np.ones(len(ordered), dtype=bool)
        for key in keys:
            values = ordered[key].to_numpy()
            same[1:] &= values[1:] == values[:-1]
        same[0] = False
        frames = [ordered[~same].assign(pattern=""), ordered]
        if self.pairs:
            previous = np.roll(ordered["pattern"].to_numpy(), 1)
            frames.append(ordered[same].assign(pattern=previous[same] + PAIR + ordered["pattern"].to_numpy()[same]))
        return pd.concat(frames, ignore_index=True).drop(columns="timestamp").drop_duplicates()

    def _templates(self, logs: pd.DataFrame) -> np.ndarray:
        return self.miner_.labels(logs["message"])

    def fit(self, bundle: MeltBundle) -> Self:
        logs = self.require(bundle)
        self.miner_ = TemplateMiner(masks=self.masks, sim_th=self.sim_th, depth=self.depth)
        self.miner_.fit(logs["message"])
        events = self._events(logs, self._templates(logs), None)
        self.units_ = events[events["pattern"] == ""].groupby("service", observed=True).size().rename("base_n")
        self.baseline_ = (events[events["pattern"] != ""].groupby(["service", "pattern"], observed=True).size()
                          .rename("base_k").reset_index())
        self.template_text_ = {str(k): v for k, v in self.miner_.templates().items()}
        return self

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        logs = self.require(bundle)
        if logs.empty:
            return empty_scores()
        bucket = logs["timestamp"].dt.floor(parse_duration(self.window))
        events = self._events(logs, self._templates(logs), bucket)
        cell = ["service", "bucket"]
        units = events[events["pattern"] == ""].groupby(cell, observed=True).size().rename("n").reset_index()
        units = units.join(self.units_, on="service", how="inner")  # services unseen in training: no baseline
        units = units[units["n"] >= self.min_units]
        if units.empty:
            return empty_scores()
        seen = (events[events["pattern"] != ""].groupby(cell + ["pattern"], observed=True).size()
                .rename("k").reset_index())
        # every baseline pattern of an active service is a candidate too: vanished ones have no row
        expected = units.merge(self.baseline_, on="service", how="inner")[cell + ["pattern"]]
        cells = pd.concat([seen[cell + ["pattern"]], expected]).drop_duplicates()
        cells = (cells.merge(units, on=cell, how="inner")
                 .merge(seen, on=cell + ["pattern"], how="left")
                 .merge(self.baseline_, on=["service", "pattern"], how="left"))
        k = cells["k"].fillna(0).to_numpy(float)
        n = cells["n"].to_numpy(float)
        base_k = cells["base_k"].fillna(0).to_numpy(float)
        base_n = cells["base_n"].to_numpy(float)
        share, base_share = (k + 0.5) / (n + 1), (base_k + 0.5) / (base_n + 1)
        pooled = (k + base_k + 1) / (n + base_n + 2)
        z = (share - base_share) / np.sqrt(pooled * (1 - pooled) * (1 / (n + 1) + 1 / (base_n + 1)))
        kind = np.where(base_k == 0, "new_pattern", np.where(z < 0, "pattern_vanished", "pattern_grew"))
        codes, patterns = pd.factorize(cells["pattern"])
        text = np.array([self._describe(p) for p in patterns], dtype=object)[codes]  # once per distinct pattern
        evidence = [
            {"value": round(float(s), 3), "expected_range": [round(float(b), 3), round(float(b), 3)],
             "anomaly_type": a, "template": t, "traces": int(m), "z": round(float(v), 2)}
            for s, b, a, t, m, v in zip(k / n, base_k / base_n, kind, text, n, z, strict=True)
        ]
        return pd.DataFrame({"timestamp": cells["bucket"].to_numpy(), "service": cells["service"].to_numpy(),
                             "detector": self.name, "entity": text, "score": np.abs(z), "evidence": evidence})

    def _describe(self, pattern: str) -> str:
        parts = pattern.split(PAIR)
        return PAIR.join(self.template_text_.get(p, p[4:] if p.startswith("new:") else p) for p in parts)

    def _save_state(self, root: Path) -> None:
        import joblib

        self.miner_.save(root / "drain3_state.json")
        joblib.dump({"baseline_": self.baseline_, "units_": self.units_, "template_text_": self.template_text_},
                    root / "state.joblib")

    def _load_state(self, root: Path) -> None:
        import joblib

        self.miner_ = TemplateMiner(masks=self.masks, sim_th=self.sim_th, depth=self.depth)
        self.miner_.load(root / "drain3_state.json")
        for key, value in joblib.load(root / "state.joblib").items():
            setattr(self, key, value)
