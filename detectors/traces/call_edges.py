"""Call-edge evidence from client spans: per (caller -> callee, operation, window), the gap that the
callee's server span does not explain, client-side failures and retries, against each edge's baseline.

The gap (:mod:`detectors.traces.client_calls`) is what a network delay, packet loss or a full
accept queue adds to a call; the callee's own spans stay flat, so ``span_latency`` (self time)
cannot see it and the caller's latency metrics rise everywhere upstream. Per window: a robust
z-score of the median log gap against the edge's training median and MAD (as ``span_latency``
scores self time), and binomial z-scores of the share of calls that failed at the client only
(timeouts, refused or reset connections) and of retried calls. The score is the largest of the
three: a faster or calmer call scores below zero, which calibration maps to 0. Which end of the edge the anomaly
belongs to is the ranking's call (:func:`rca.terms.call_edge_evidence`).
"""

from __future__ import annotations

from typing import Self

import numpy as np
import pandas as pd

from detectors.edges import edge_score_frame
from detectors.robust import binomial_z, median_shift_z, robust_baseline
from detectors.traces.client_calls import callee_map, client_calls
from melt.core.bundle import MeltBundle
from melt.core.calibration import effect_size_floor
from melt.core.detector import Detector, empty_scores
from melt.core.errors import PluginError
from melt.core.timeutil import parse_duration

EDGE = ["caller", "callee", "operation"]


class CallEdgeDetector(Detector):
    """Network-side latency, client-side failures and retries per call edge.

    Args:
        window: bucket width.
        min_calls: windows where an edge carried fewer calls are not scored.
        expected_sigmas: half-width of ``expected_range`` in robust sigmas.
        alert_z: a window this many standard errors out scores at least 4 calibrated sigma, in
            proportion above, whatever the training history held (as ``zscore``'s); 0 = off.
    """

    name = "call_edges"
    signal = "traces"

    def __init__(self, window: str = "1m", min_calls: int = 3, expected_sigmas: float = 3.0,
                 alert_z: float = 20.0) -> None:
        self.window = window
        self.min_calls = min_calls
        self.expected_sigmas = expected_sigmas
        self.alert_z = alert_z

    def _calls(self, bundle: MeltBundle, known: pd.Series | None) -> pd.DataFrame:
        spans = self.require(bundle)
        if "start_time" not in spans.columns:
            raise PluginError(f"detector '{self.name}' needs the optional traces column 'start_time'")
        calls = client_calls(spans, known)
        calls["log_gap"] = np.log1p(calls["gap_ms"].astype(float))
        return calls

    def fit(self, bundle: MeltBundle) -> Self:
        self.callees_ = callee_map(self._calls(bundle, None))
        calls = self._calls(bundle, self.callees_)  # as score sees them: client spans without a server span too
        keys = [calls[k].rename(k) for k in EDGE]
        baseline = robust_baseline(calls["log_gap"], keys, rel_floor=0.02, abs_floor=0.05)
        rates = calls.groupby(EDGE, observed=True)[["client_error", "retry"]].mean()
        self.baseline_ = baseline.join(rates)
        return self

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        calls = self._calls(bundle, self.callees_)
        if calls.empty:
            return empty_scores()
        calls["bucket"] = pd.to_datetime(calls["start_time"], utc=True).dt.floor(parse_duration(self.window))
        windows = calls.groupby([*EDGE, "bucket"], observed=True).agg(
            n=("log_gap", "size"), log_gap=("log_gap", "median"), gap_ms=("gap_ms", "median"),
            errors=("client_error", "sum"), retries=("retry", "sum"), missing=("server_missing", "sum")).reset_index()
        windows = windows[windows["n"] >= self.min_calls]
        base = self.baseline_.reindex(pd.MultiIndex.from_frame(windows[EDGE]))
        known = base["median"].notna().to_numpy()
        windows, base = windows[known].reset_index(drop=True), base[known]
        if windows.empty:
            return empty_scores()
        n = windows["n"].to_numpy()
        median, sigma = base["median"].to_numpy(), base["sigma"].to_numpy()
        z = {
            "call_delay": median_shift_z(windows["log_gap"].to_numpy(), n, median, sigma),
            "call_errors": binomial_z(windows["errors"].to_numpy(), n, base["client_error"].to_numpy()),
            "retries": binomial_z(windows["retries"].to_numpy(), n, base["retry"].to_numpy()),
        }
        stacked = np.column_stack(list(z.values()))
        raw = stacked.max(axis=1)  # signed: calibration maps a calmer window to 0 and reads the spread
        kind = np.array(list(z))[stacked.argmax(axis=1)]
        low = np.expm1(median - self.expected_sigmas * sigma)
        high = np.expm1(median + self.expected_sigmas * sigma)
        evidence = [
            {"value": round(float(gap), 3), "expected_range": [round(float(lo), 3), round(float(hi), 3)],
             "unit": "ms gap (client span minus server span)", "anomaly_type": k, "calls": int(c),
             "client_errors": int(e), "retries": int(r), "server_missing": int(m), "operation": op}
            for gap, lo, hi, k, c, e, r, m, op in zip(windows["gap_ms"], low, high, kind, n, windows["errors"],
                                                      windows["retries"], windows["missing"], windows["operation"],
                                                      strict=True)
        ]
        return edge_score_frame(self.name, windows, raw, evidence)

    def score_floor(self, raw: np.ndarray) -> np.ndarray | None:
        """A window ``alert_z`` standard errors out is anomalous however wild the history was
        (the reasoning of :meth:`detectors.metrics.zscore.RobustZScore.score_floor`)."""
        return effect_size_floor(raw, self.alert_z)
