"""Template-frequency anomalies per (service, window): new templates, bursts and drops.

Counts of each Drain template per service and window are compared with their training mean and
variance (a Poisson-inflated z-score, as in count-based log anomaly detection, He et al., ISSRE
2016 "Experience Report: System Log Analysis for Anomaly Detection"). Lines that match no learned
template count as a new template, keyed by their masked text, without changing the fitted miner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detectors.logs.peers import describe, known_services, label_peers, split_peer
from detectors.logs.templates import PARSERS, UNMATCHED, Parser, TemplateMiner, first_seen, learn_pooled
from melt.core.bundle import MeltBundle
from melt.core.detector import Detector, empty_scores
from melt.core.timeutil import parse_duration

QUIET_LEVEL_WEIGHT = 0.5  # INFO/DEBUG bursts track traffic; WARN/ERROR bursts track failures


class LogTemplateDetector(Detector):
    """New, bursting and vanishing log templates.

    Args:
        window: bucket width for template counts.
        parser: template parser, ``shapes`` (no per-source settings) or ``drain``.
        sim_th: Drain similarity threshold (``parser: drain`` only).
        depth: Drain parse-tree depth (``parser: drain`` only).
        new_template_score: raw score of a template never seen in training (plus log of its count).
        steady_min_mean: a template with at least this mean count per window can be flagged for a drop.
        masks: ``[regex, token]`` masking rules; ``None`` uses the built-in set.
    """

    name = "log_templates"
    choices = {"parser": PARSERS}
    signal = "logs"
    partition = "service"
    reads = ("traces",)
    services_: tuple[str, ...] = ()  # services seen in training, whose names a line may mention

    def __init__(self, window: str = "1m", parser: Parser = "shapes", sim_th: float = 0.4, depth: int = 4,
                 new_template_score: float = 8.0, steady_min_mean: float = 5.0,
                 masks: list[list[str]] | None = None) -> None:
        self.window = window
        self.parser = parser
        self.sim_th = sim_th
        self.depth = depth
        self.new_template_score = new_template_score
        self.steady_min_mean = steady_min_mean
        self.masks = masks

    def _miner(self) -> TemplateMiner:
        return TemplateMiner(masks=self.masks, parser=self.parser, sim_th=self.sim_th, depth=self.depth)

    # Fitting runs as two map/reduce rounds, whole (one part) or service by service on a Dask
    # cluster (``Detector.fit_calibrated_by_parts``); both learn the same state.
    fit_rounds = 2  # the parts' masked lines, buckets and names; then their template counts

    def fit_map(self, bundle: MeltBundle, step: int) -> dict[str, Any]:
        logs = self.require(bundle)
        if step == 0:  # each distinct masked line, when it first appears; the buckets; the names
            return {"texts": first_seen(self._miner(), logs),
                    "buckets": bundle.buckets("logs", parse_duration(self.window)),
                    "services": known_services(logs, bundle.traces)}
        codes, distinct = self.miner_.distinct(logs["message"])
        ids = np.array([self.fitting_[text] for text in distinct.astype(str)], dtype=np.int64)[codes]
        template = label_peers(ids.astype(str), logs, bundle.traces, self.services_)
        counts = self._counts(logs, template)
        counts["square"] = counts["count"].astype(float) ** 2
        return {"sums": counts.groupby(["service", "template"], observed=True)[["count", "square"]].sum(),
                "levels": pd.DataFrame({"template": template, "level": logs["level"].to_numpy()})
                .groupby(["template", "level"], observed=True).size()}

    def fit_reduce(self, step: int, parts: list[dict[str, Any]]) -> None:
        if step == 0:
            self.miner_ = self._miner()
            self.fitting_ = learn_pooled(self.miner_, [p["texts"] for p in parts])
            buckets = pd.concat([pd.Series(p["buckets"]) for p in parts], ignore_index=True)
            self.train_buckets_ = pd.DatetimeIndex(buckets).unique().sort_values()
            self.services_ = tuple(sorted(set().union(*(p["services"] for p in parts))))
            return
        sums = pd.concat([p["sums"] for p in parts]).groupby(level=[0, 1]).sum().sort_index()
        n_windows = max(len(self.train_buckets_), 1)
        mean = sums["count"] / n_windows
        var = (sums["square"] / n_windows - mean**2).clip(lower=0)
        self.baseline_ = pd.DataFrame({"mean": mean, "var": var})
        self.baseline_.index.names = ["service", "template"]
        # each template's most common level (ties: the first in order, as ``Series.mode`` picks)
        levels = pd.concat([p["levels"] for p in parts]).groupby(level=[0, 1]).sum().rename("n").reset_index()
        levels = levels.sort_values(["template", "n", "level"], ascending=[True, False, True], kind="stable")
        self.template_level_ = dict(levels.drop_duplicates("template")[["template", "level"]].itertuples(index=False))
        self.template_text_ = {str(k): v for k, v in self.miner_.templates().items()}
        del self.fitting_

    def calibration_scores(self, bundle: MeltBundle) -> np.ndarray:
        """The training data's scores, with the training data's buckets whether ``bundle`` is all
        of it or one service's part."""
        return self._checked(self._scores(bundle, self.train_buckets_))["score"].to_numpy()

    def _counts(self, logs: pd.DataFrame, template: np.ndarray) -> pd.DataFrame:
        bucket = logs["timestamp"].dt.floor(parse_duration(self.window))
        frame = pd.DataFrame({"service": logs["service"].to_numpy(), "template": template, "bucket": bucket.to_numpy(),
                              "row": np.arange(len(logs))})
        return (frame.groupby(["service", "template", "bucket"], observed=True, sort=True)
                .agg(count=("row", "size"), example=("row", "first")).reset_index())

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        logs = self.require(bundle)
        return self._scores(bundle, bundle.buckets("logs", parse_duration(self.window)) if len(logs) else None)

    def _scores(self, bundle: MeltBundle, grid: pd.DatetimeIndex | None) -> pd.DataFrame:
        """Scores of ``bundle``'s logs; a steady template's missing count in a ``grid`` bucket is a zero."""
        logs = self.require(bundle)
        if logs.empty:
            return empty_scores()
        ids, masked = self.miner_.match(logs["message"])
        template = np.where(ids == UNMATCHED, "new:" + pd.Series(masked).astype(str).to_numpy(), ids.astype(str))
        template = label_peers(template, logs, bundle.traces, self.services_)
        counts = self._counts(logs, template)
        grid_buckets = grid if grid is not None else counts["bucket"].unique()
        # steady templates that vanish have no row: add zero counts for them (in every bucket in
        # which the data has lines: a service silent then, while others log, counts zero lines)
        steady = self.baseline_[self.baseline_["mean"] >= self.steady_min_mean].index
        active_services = counts["service"].unique()
        steady = [k for k in steady if k[0] in set(active_services)]
        if steady and len(grid_buckets):
            full = pd.MultiIndex.from_tuples([(s, t, b) for s, t in steady for b in grid_buckets],
                                             names=["service", "template", "bucket"])
            present = pd.MultiIndex.from_frame(counts[["service", "template", "bucket"]])
            zero = full.difference(present)
            if len(zero):
                counts = pd.concat([counts, pd.DataFrame({"service": zero.get_level_values(0),
                                    "template": zero.get_level_values(1), "bucket": zero.get_level_values(2),
                                    "count": 0, "example": -1})], ignore_index=True)
        keys = pd.MultiIndex.from_arrays([counts["service"], counts["template"]])
        base = self.baseline_.reindex(keys)
        # a learned template that now names another peer (retries to a service it rarely called) is a
        # burst from a zero baseline, not a new template
        learned = {(service, split_peer(label)[0]) for service, label in self.baseline_.index}
        codes, pairs = pd.factorize(keys)
        known = np.array([(service, split_peer(label)[0]) in learned for service, label in pairs], dtype=bool)[codes]
        mean = base["mean"].fillna(0).to_numpy()
        sd = np.sqrt(base["var"].fillna(0).to_numpy() + mean + 0.5)
        count = counts["count"].to_numpy().astype(float)
        z = (count - mean) / sd
        levels = pd.Series(counts["template"]).map(self.template_level_).to_numpy()
        new_level = logs["level"].to_numpy()[np.maximum(counts["example"].to_numpy(), 0)]
        levels = np.where(pd.isna(levels), new_level, levels)
        quiet = np.isin(levels, ["INFO", "DEBUG"])
        burst = np.where(quiet, z * QUIET_LEVEL_WEIGHT, z)
        drop = np.where(mean >= self.steady_min_mean, -z, 0.0)
        raw = np.where(known, np.maximum(burst, drop), self.new_template_score + np.log1p(count))
        kind = np.where(~known, "new_template", np.where(burst >= drop, "log_burst", "log_drop"))
        examples = counts["example"].to_numpy()
        messages = logs["message"].to_numpy()
        codes, labels = pd.factorize(counts["template"])
        text = np.array([describe(t, self.template_text_) for t in labels], dtype=object)[codes]
        peers = np.array([split_peer(t)[1] for t in labels], dtype=object)[codes]
        evidence = [
            {"value": int(c), "expected_range": [round(max(m - 3 * s, 0.0), 2), round(m + 3 * s, 2)],
             "anomaly_type": k, "template": tx, "level": lv, "expected_count": round(float(m), 2),
             "example": str(messages[e]) if e >= 0 else None, "peer": p}
            for c, m, s, k, tx, lv, e, p in zip(count, mean, sd, kind, text, levels, examples, peers, strict=True)
        ]
        return pd.DataFrame({
            "timestamp": counts["bucket"].to_numpy(),
            "service": counts["service"].to_numpy(),
            "detector": self.name,
            "entity": text,
            "score": raw,
            "evidence": evidence,
        })

    def _save_state(self, root: Path) -> None:
        import joblib

        self.miner_.save(root / "templates.json")
        joblib.dump({"baseline_": self.baseline_, "template_level_": self.template_level_,
                     "template_text_": self.template_text_, "services_": self.services_}, root / "state.joblib")

    def _load_state(self, root: Path) -> None:
        import joblib

        self.miner_ = self._miner()
        self.miner_.load(root / "templates.json")
        for key, value in joblib.load(root / "state.joblib").items():
            setattr(self, key, value)
