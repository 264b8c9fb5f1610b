"""Per-operation self time and own errors of spans, against a robust per-operation baseline.

A span's *self time* is its duration minus its synchronous children's: it grows in the service
that is slow, not in the callers that merely wait for it, which is the trace evidence RCA needs
(the "exclusive time" used by MicroRank and TraceRCA). Client spans are left out: what they add
beyond their server span is the network's and the callee's front door's, which
:mod:`detectors.traces.call_edges` scores per call edge; here it would blame the caller. An *own
error* is an error status on a span none of whose children failed. Both are aggregated per (service, operation, window) and compared
with the training baseline: a robust z-score of the window's median log self time, and a binomial
z-score of the own-error rate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from detectors.robust import binomial_z, median_shift_z, robust_baseline
from detectors.traces.client_calls import client_span_mask
from melt.core.bundle import MeltBundle
from melt.core.detector import Detector, empty_scores
from melt.core.errors import PluginError
from melt.core.timeutil import parse_duration


def self_time_and_own_error(spans: pd.DataFrame) -> pd.DataFrame:
    """Add ``self_ms`` and ``own_error`` columns (vectorised joins on parent span id)."""
    error = (spans["status_code"].fillna(0).astype("int64") >= 500) if "status_code" in spans.columns else \
        pd.Series(False, index=spans.index)
    is_async = spans["span_kind"].isin(["consumer", "producer"]).fillna(False) if "span_kind" in spans.columns else \
        pd.Series(False, index=spans.index)
    child = pd.DataFrame({"trace_id": spans["trace_id"], "span_id": spans["parent_span_id"],
                          "child_ms": spans["duration"].where(~is_async, 0.0), "child_error": error})
    child = child[child["span_id"].notna()]
    per_parent = child.groupby(["trace_id", "span_id"], observed=True).agg(child_ms=("child_ms", "sum"),
                                                                           child_error=("child_error", "any"))
    keys = pd.MultiIndex.from_arrays([spans["trace_id"], spans["span_id"]])
    joined = per_parent.reindex(keys)
    child_ms = joined["child_ms"].fillna(0.0).to_numpy()
    child_error = joined["child_error"].fillna(False).to_numpy(dtype=bool)
    out = spans.copy()
    out["self_ms"] = np.maximum(spans["duration"].to_numpy() - child_ms, 0.0)
    out["own_error"] = error.to_numpy() & ~child_error
    return out


class SpanLatencyDetector(Detector):
    """Self-time spikes and own-error bursts per (service, operation, window).

    Args:
        window: bucket width.
        min_spans: windows with fewer spans of an operation are not scored.
        expected_sigmas: half-width of ``expected_range`` in robust sigmas.
    """

    name = "span_latency"
    signal = "traces"
    partition = "service"

    def __init__(self, window: str = "1m", min_spans: int = 3, expected_sigmas: float = 3.0) -> None:
        self.window = window
        self.min_spans = min_spans
        self.expected_sigmas = expected_sigmas

    def _spans(self, bundle: MeltBundle) -> pd.DataFrame:
        spans = self.require(bundle)
        if "start_time" not in spans.columns:
            raise PluginError(f"detector '{self.name}' needs the optional traces column 'start_time'")
        spans = self_time_and_own_error(spans)
        spans["log_self"] = np.log1p(spans["self_ms"])
        return spans[~client_span_mask(spans)]  # a client span's own time is the call's: call_edges scores it

    # one round: each operation's baseline is its own spans' (a fit by parts, one service's spans per part)
    fit_rounds = 1

    def fit_map(self, bundle: MeltBundle, step: int) -> pd.DataFrame:
        spans = self._spans(bundle)
        baseline = robust_baseline(spans["log_self"], [spans["service_name"].rename("service"),
                                                       spans["span_name"].rename("operation")], rel_floor=0.02, abs_floor=0.05)
        error_rate = spans.groupby(["service_name", "span_name"], observed=True)["own_error"].mean()
        baseline["error_rate"] = error_rate.to_numpy()
        baseline["median_ms"] = np.expm1(baseline["median"])
        return baseline

    def fit_reduce(self, step: int, parts: list[pd.DataFrame]) -> None:
        self.baseline_ = pd.concat(parts).sort_index() if len(parts) > 1 else parts[0]

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        spans = self._spans(bundle)
        if spans.empty:
            return empty_scores()
        spans["bucket"] = spans["start_time"].dt.floor(parse_duration(self.window))
        windows = spans.groupby(["service_name", "span_name", "bucket"], observed=True).agg(
            n=("log_self", "size"), log_self=("log_self", "median"), errors=("own_error", "sum"),
            self_ms=("self_ms", "median")).reset_index()
        windows = windows[windows["n"] >= self.min_spans]
        base = self.baseline_.reindex(pd.MultiIndex.from_arrays([windows["service_name"], windows["span_name"]]))
        known = base["median"].notna().to_numpy()
        windows, base = windows[known], base[known]
        n = windows["n"].to_numpy()
        latency_z = median_shift_z(windows["log_self"].to_numpy(), n, base["median"].to_numpy(), base["sigma"].to_numpy())
        p = np.clip(base["error_rate"].to_numpy(), 0.001, 0.999)
        error_z = binomial_z(windows["errors"].to_numpy(), n, p)
        raw = np.maximum(np.abs(latency_z), error_z)
        kind = np.where(error_z > np.abs(latency_z), "error_burst", np.where(latency_z >= 0, "latency_spike", "latency_drop"))
        low = np.expm1(base["median"].to_numpy() - self.expected_sigmas * base["sigma"].to_numpy())
        high = np.expm1(base["median"].to_numpy() + self.expected_sigmas * base["sigma"].to_numpy())
        error_share = windows["errors"].to_numpy() / n
        evidence = [
            {"value": round(float(v), 3) if k != "error_burst" else round(float(e), 3),
             "expected_range": [round(float(lo), 3), round(float(hi), 3)] if k != "error_burst" else [0.0, round(float(pr) * 3, 4)],
             "anomaly_type": k, "unit": "ms self time" if k != "error_burst" else "own error rate",
             "spans": int(cnt), "operation": op}
            for v, e, lo, hi, pr, k, cnt, op in zip(windows["self_ms"], error_share, low, high, p, kind, n,
                                                     windows["span_name"], strict=True)
        ]
        return pd.DataFrame({
            "timestamp": windows["bucket"].to_numpy(),
            "service": windows["service_name"].to_numpy(),
            "detector": self.name,
            "entity": windows["span_name"].to_numpy(),
            "score": raw,
            "evidence": evidence,
        })
