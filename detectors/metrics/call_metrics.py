"""Call-edge evidence from latency metrics measured at both ends of each call edge.

A mesh or RPC library reports each call's latency at the caller (OpenTelemetry's
``rpc.client.duration``, with the callee as ``peer``) and at the callee (``rpc.server.duration``,
with the caller as ``peer``). Their difference per edge and minute is the network's share of the
call (OnlineBoutique's ``source_50.csv`` minus ``destination_50.csv`` in the Nezha data): it grows
when the callee's network is delayed while both services' own metrics stay flat. This is the metric
twin of :mod:`detectors.traces.call_edges`, and it covers the minutes where traces were not kept.
An edge that has only a client-side series in training takes that series as its gap; a minute
where another edge misses its server-side point is left out. The score is a robust z-score of the
gap against the edge's training median and MAD (with the tail-quantile floor of
:func:`detectors.robust.robust_baseline`, since a per-minute median of few calls jumps by whole
histogram buckets), smoothed over a trailing median. It stays signed (a faster call scores below
zero, which calibration maps to 0), so that the calibration sees the spread of ordinary minutes.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import pandas as pd

from detectors.edges import edge_score_frame
from detectors.metrics.matrix import smooth
from detectors.robust import robust_baseline
from melt.core.bundle import MeltBundle
from melt.core.calibration import effect_size_floor
from melt.core.detector import Detector, empty_scores
from melt.core.timeutil import parse_duration

EDGE = ["caller", "callee"]


class CallMetricsDetector(Detector):
    """Network share of each call edge's latency, from client- and server-side latency series.

    Args:
        client_metric: metric measured by the caller, ``peer`` = the callee.
        server_metric: metric measured by the callee, ``peer`` = the caller.
        scale: multiplies the metric values into milliseconds for the evidence (1000 for seconds).
        window: bucket that pairs the two sides' points.
        min_points: edges with fewer training points are not scored.
        smooth_window: trailing median of the score over this many points (1 = off).
        expected_sigmas: half-width of ``expected_range`` in robust sigmas.
        alert_z: a point this many robust sigmas out scores at least 4 calibrated sigma, in
            proportion above, whatever the training history held (as ``zscore``'s); 0 = off.
    """

    name = "call_metrics"
    signal = "metrics"

    def __init__(self, client_metric: str = "rpc.client.duration.p50", server_metric: str = "rpc.server.duration.p50",
                 scale: float = 1000.0, window: str = "1m", min_points: int = 10, smooth_window: int = 2,
                 expected_sigmas: float = 3.0, alert_z: float = 20.0) -> None:
        self.client_metric = client_metric
        self.server_metric = server_metric
        self.scale = scale
        self.window = window
        self.min_points = min_points
        self.smooth_window = smooth_window
        self.expected_sigmas = expected_sigmas
        self.alert_z = alert_z

    def gaps(self, bundle: MeltBundle, client_only: set[tuple[str, str]]) -> pd.DataFrame:
        """Per (caller, callee, bucket): the client-side value minus the server-side one, in ms.

        ``client_only``: the edges that have no server-side series at all, whose client-side value
        is their gap; a minute where another edge misses its server-side point is left out.
        """
        frame = self.require(bundle)
        if "peer" not in frame.columns:
            return pd.DataFrame(columns=[*EDGE, "bucket", "gap_ms"])
        frame = frame[frame["peer"].notna() & frame["value"].notna()]
        bucket = pd.to_datetime(frame["timestamp"], utc=True).dt.floor(parse_duration(self.window))
        side = pd.DataFrame({"bucket": bucket, "value": frame["value"].astype(float) * self.scale,
                             "service": frame["service"].astype(str), "peer": frame["peer"].astype(str)})
        client = side[(frame["metric"] == self.client_metric).to_numpy()].rename(columns={"service": "caller", "peer": "callee"})
        server = side[(frame["metric"] == self.server_metric).to_numpy()].rename(columns={"service": "callee", "peer": "caller"})
        client = client.groupby([*EDGE, "bucket"], observed=True)["value"].mean()
        server = server.groupby([*EDGE, "bucket"], observed=True)["value"].mean()
        alone = pd.MultiIndex.from_arrays([client.index.get_level_values(k) for k in EDGE]).isin(list(client_only))
        gap = client - server.reindex(client.index).where(~alone, 0.0).to_numpy()
        return gap.dropna().rename("gap_ms").reset_index()

    def fit(self, bundle: MeltBundle) -> Self:
        self.client_only_ = self._client_only(bundle)
        gaps = self.gaps(bundle, self.client_only_)
        baseline = robust_baseline(gaps["gap_ms"], [gaps["caller"], gaps["callee"]], rel_floor=0.05, abs_floor=0.5,
                                   tail_quantile=0.99)
        self.baseline_ = baseline[baseline["count"] >= self.min_points]
        return self

    def _client_only(self, bundle: MeltBundle) -> set[tuple[str, str]]:
        """Edges with a client-side series and no server-side one in ``bundle``."""
        frame = self.require(bundle)
        if "peer" not in frame.columns:
            return set()
        rows = frame[frame["peer"].notna()]
        client = rows[rows["metric"] == self.client_metric]
        server = rows[rows["metric"] == self.server_metric]
        return (set(zip(client["service"].astype(str), client["peer"].astype(str), strict=True))
                - set(zip(server["peer"].astype(str), server["service"].astype(str), strict=True)))

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        gaps = self.gaps(bundle, self.client_only_).sort_values("bucket", kind="stable")
        base = self.baseline_.reindex(pd.MultiIndex.from_frame(gaps[EDGE])) if len(gaps) else self.baseline_.iloc[:0]
        known = base["median"].notna().to_numpy()
        gaps, base = gaps[known].reset_index(drop=True), base[known]
        if gaps.empty:
            return empty_scores()
        median, sigma = base["median"].to_numpy(), base["sigma"].to_numpy()
        z = (gaps["gap_ms"].to_numpy() - median) / sigma
        series = pd.MultiIndex.from_frame(gaps[EDGE]).factorize()[0]
        raw = smooth(z, series, self.smooth_window, how="median")  # signed: calibration reads the spread
        low, high = median - self.expected_sigmas * sigma, median + self.expected_sigmas * sigma
        evidence = [
            {"value": round(float(v), 3), "expected_range": [round(float(lo), 3), round(float(hi), 3)],
             "unit": f"ms gap ({self.client_metric} minus {self.server_metric})", "anomaly_type": "call_delay",
             "z": round(float(zz), 2)}
            for v, lo, hi, zz in zip(gaps["gap_ms"], low, high, z, strict=True)
        ]
        return edge_score_frame(self.name, gaps, raw, evidence)

    def score_floor(self, raw: np.ndarray) -> np.ndarray | None:
        """A gap ``alert_z`` robust sigmas out is anomalous however wild the history was."""
        return effect_size_floor(raw, self.alert_z)
