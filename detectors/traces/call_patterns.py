"""Call-pattern shift per operation: the spans an operation's calls make, and their order, that
appear in or vanish from its calls.

Nezha (Yu et al., FSE 2023) builds its event graph from log lines *and* spans: a span is an event of
the service that ran it, so a code path that changed shows even where nothing was logged, as a call
the operation stops making (an exception thrown before it) or a new one. This is the span half of
:mod:`detectors.logs.log_patterns`, scored the same way (:mod:`detectors.pattern_shares`): a unit
is one call into a service (its entry span, :func:`detectors.span_tree.entry_rows`), its
events are the spans it ran inside that service, named by operation and, for a call out, by the
service called (``[callee]``), in start order; patterns are single events and consecutive pairs. A
checkout whose order placement now stops after charging the card loses ``Charge [payment] ->
ShipOrder [shipping]`` from most of its calls. The evidence stays with the service whose calls
changed: its own code path is what changed. A call out is seen as a client span: in traces of
server spans only, each service's span is its own unit, and the calls between services are not
events of anyone.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import pandas as pd

from detectors.pattern_shares import (
    change_kind,
    confident_change,
    consecutive_pairs,
    fit_baseline,
    pattern_cells,
    share_change,
)
from detectors.span_tree import entry_rows, parent_rows
from detectors.traces.client_calls import span_callees
from melt.core.bundle import MeltBundle
from melt.core.calibration import effect_size_floor
from melt.core.detector import Detector, empty_scores
from melt.core.errors import PluginError
from melt.core.timeutil import parse_duration


class CallPatternDetector(Detector):
    """Spans and span pairs whose per-call share changed, per (service, operation, window).

    Args:
        window: bucket width.
        pairs: also score consecutive pairs of spans within a call.
        min_units: windows where an operation has fewer calls are not scored.
        confidence_z: the score is the change in share less this many standard errors.
        alert_share: a confident change in at least this share of an operation's calls scores at
            least 4 sigma, in proportion above, whatever the training history held; 0 = off.
    """

    name = "call_patterns"
    signal = "traces"

    def __init__(self, window: str = "1m", pairs: bool = True, min_units: int = 3, confidence_z: float = 1.96,
                 alert_share: float = 0.5) -> None:
        self.window = window
        self.pairs = pairs
        self.min_units = min_units
        self.confidence_z = confidence_z
        self.alert_share = alert_share

    def _events(self, spans: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Patterns per unit (one call into a service), and the units, keyed by (service, op, unit, bucket)."""
        if "start_time" not in spans.columns:
            raise PluginError(f"detector '{self.name}' needs the optional traces column 'start_time'")
        spans = spans.reset_index(drop=True)
        if spans.empty:
            empty = pd.DataFrame({k: pd.Series(dtype=object) for k in ("service", "op", "unit", "bucket", "pattern")})
            return empty, empty.drop(columns="pattern")
        parent = parent_rows(spans)
        entry = entry_rows(spans, parent)
        own = entry == np.arange(len(spans))
        name = spans["span_name"].astype(str).to_numpy(dtype=object)
        callee = span_callees(spans, parent)
        label = np.where(pd.notna(callee), name + " [" + callee.astype(str) + "]", name)
        start = pd.to_datetime(spans["start_time"], utc=True)
        frame = pd.DataFrame({"service": spans["service_name"].astype(str).to_numpy(dtype=object),
                              "op": name[entry], "unit": entry, "pattern": label,
                              "order": start.to_numpy(dtype="datetime64[ns]").view("int64"),
                              # a call's spans count in the window where the call began
                              "bucket": start.dt.floor(parse_duration(self.window)).to_numpy(dtype="datetime64[ns]")[entry]})
        keys = ["service", "op", "unit", "bucket"]
        units = frame.loc[own, keys]
        inside = frame[~own].sort_values(keys + ["order"], kind="stable")
        events = [inside[keys + ["pattern"]]]
        if self.pairs:
            events.append(consecutive_pairs(inside, keys))
        return pd.concat(events, ignore_index=True).drop_duplicates(), units

    def fit(self, bundle: MeltBundle) -> Self:
        events, units = self._events(self.require(bundle))
        self.units_, self.baseline_ = fit_baseline(events, units)
        # kept for calibration_scores, which scores the same bundle again with each window left out;
        # not learned state (no trailing _), never saved, dropped once used
        self._training = (id(bundle), events, units)
        return self

    def _cells(self, events: pd.DataFrame, units: pd.DataFrame, leave_out: bool) -> pd.DataFrame:
        cells = pattern_cells(events, units, self.units_, self.baseline_, leave_out, self.min_units)
        cells["bucket"] = pd.to_datetime(cells["bucket"], utc=True)
        return cells

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        spans = self.require(bundle)
        cells = self._cells(*self._events(spans), leave_out=False) if len(spans) else pd.DataFrame()
        if cells.empty:
            return empty_scores()
        change, error = share_change(cells)
        z = change / error
        k, n, base_k, base_n = (cells[c].to_numpy(float) for c in ("k", "n", "base_k", "base_n"))
        kind = change_kind(base_k, z)
        evidence = [
            {"value": round(float(s), 3), "expected_range": [round(float(b), 3), round(float(b), 3)],
             "anomaly_type": a, "pattern": p, "operation": o, "units": int(m), "z": round(float(v), 2)}
            for s, b, a, p, o, m, v in zip(k / n, base_k / base_n, kind, cells["pattern"], cells["op"], n, z, strict=True)
        ]
        return pd.DataFrame({"timestamp": cells["bucket"].to_numpy(), "service": cells["service"].to_numpy(),
                             "detector": self.name, "entity": (cells["op"] + ": " + cells["pattern"]).to_numpy(),
                             "score": confident_change(change, error, self.confidence_z), "evidence": evidence})

    def calibration_scores(self, bundle: MeltBundle) -> np.ndarray:
        """Each training window against the training baseline without it (as ``log_patterns`` does)."""
        held = getattr(self, "_training", None)
        self._training = None
        events, units = held[1:] if held and held[0] == id(bundle) else self._events(self.require(bundle))
        change, error = share_change(self._cells(events, units, leave_out=True))
        return confident_change(change, error, self.confidence_z)

    def score_floor(self, raw: np.ndarray) -> np.ndarray | None:
        """A code path that changed in ``alert_share`` of an operation's calls is a fault whatever
        the history held (the reasoning of ``log_patterns``)."""
        return effect_size_floor(raw, self.alert_share)
