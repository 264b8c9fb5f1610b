"""Log-pattern shift per operation: templates and template pairs that appear in, or vanish from, its calls.

Nezha (Yu et al., FSE 2023, "Nezha: Interpretable Fine-Grained Root Causes Analysis for
Microservices on Multi-modal Observability Data") locates a fault in the service whose *expected*
event patterns vanish, or whose unexpected ones appear, between a fault-free and a faulty phase.
Nezha's event graph joins each log line to the span that wrote it, so an expected pattern is "this
operation logs this line"; a log line that vanishes while the operation's spans go on is a strong
sign that the code path inside that service changed. This detector keeps that idea as a streaming
score. A pattern is a log template, or a pair of templates logged one after the other in the same
unit. A unit is one span, when the bundle has traces and the line carries a span id; otherwise it is
what the service logged in one trace, or a single line without a trace id. For each (service,
operation, window) the detector compares the share of units that contain each pattern with the share
seen in training; a pair's share counts among the units that logged its first line (Nezha's expected
pattern: B that always followed A stops following it when the code throws between them). The score
is the lower confidence bound of the change in share (the two-proportion z-test's interval): how
much of the operation's calls changed, counting only the part of the change that the data support
(:mod:`detectors.pattern_shares`, shared with ``call_patterns``). A pattern that vanishes from half of an operation's calls outranks a busy
operation whose share moved by a few points, however significant that small move is: input-dependent
branches of a busy operation drift with the request mix, but a fault cuts or adds a code path in most
calls. Shares conditioned on the operation do not move with traffic volume or with which operations
are called, both of which move raw template counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detectors.logs.peers import describe, known_services, label_peers, split_peer
from detectors.logs.templates import PARSERS, Parser, TemplateMiner, first_seen, learn_pooled
from detectors.pattern_shares import (
    PAIR,
    change_kind,
    confident_change,
    consecutive_pairs,
    fit_baseline,
    pattern_cells,
    share_change,
)
from detectors.span_tree import entry_rows
from melt.core.bundle import MeltBundle
from melt.core.calibration import effect_size_floor
from melt.core.detector import Detector, empty_scores
from melt.core.timeutil import parse_duration

NO_SPAN = ""  # operation of units that are not spans (a trace's lines, or one line)


class LogPatternDetector(Detector):
    """Templates and template pairs whose per-call share changed, per (service, operation, window).

    Args:
        window: bucket width.
        parser: template parser, ``shapes`` (no per-source settings) or ``drain``.
        sim_th: Drain similarity threshold (``parser: drain`` only).
        depth: Drain parse-tree depth (``parser: drain`` only).
        pairs: also score consecutive template pairs within a unit, Nezha's event pairs.
        min_units: windows where an operation has fewer calls (or a service fewer trace-less units)
            are not scored.
        masks: ``[regex, token]`` masking rules; ``None`` uses the built-in set.
        confidence_z: the score is the change in share less this many standard errors (1.96: the
            lower end of a two-sided 95% interval).
        alert_share: a confident change in at least this share of an operation's calls scores at
            least 4 sigma (the ensemble's default threshold), and proportionally more above it,
            whatever the training history held; 0 = calibration only (:meth:`score_floor`).
    """

    name = "log_patterns"
    choices = {"parser": PARSERS}
    signal = "logs"
    partition = "service"
    reads = ("traces",)
    services_: tuple[str, ...] = ()  # services seen in training, whose names a line may mention

    def __init__(self, window: str = "1m", parser: Parser = "shapes", sim_th: float = 0.4, depth: int = 4,
                 pairs: bool = True, min_units: int = 3, masks: list[list[str]] | None = None,
                 confidence_z: float = 1.96, alert_share: float = 0.5) -> None:
        self.window = window
        self.parser = parser
        self.sim_th = sim_th
        self.depth = depth
        self.pairs = pairs
        self.min_units = min_units
        self.masks = masks
        self.confidence_z = confidence_z
        self.alert_share = alert_share

    def _events(self, logs: pd.DataFrame, traces: pd.DataFrame | None, template: np.ndarray,
                width: pd.Timedelta | None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Patterns present per unit, and the units themselves, keyed by (service, op, unit[, bucket]).

        Spans without a log line are units too: their operation's expected lines vanished there. A
        line written twice with the same time stamp in the same unit (an at-least-once log shipper)
        counts once.
        """
        n = len(logs)
        frame = pd.DataFrame({"service": logs["service"].to_numpy(), "op": NO_SPAN, "pattern": template,
                              "timestamp": logs["timestamp"].to_numpy()})
        trace = logs["trace_id"].astype(object) if "trace_id" in logs.columns else pd.Series(None, index=logs.index)
        has_trace = (trace.notna() & (trace != "")).to_numpy()
        local = pd.Series(np.where(has_trace, trace.to_numpy(), "line:" + np.arange(n).astype(str)))
        frame["unit"] = pd.factorize(local)[0].astype(np.int64) + 1
        span_units = _spans(traces)
        if span_units is not None and "span_id" in logs.columns:
            keys = pd.DataFrame({"trace_id": trace.to_numpy(), "span_id": logs["span_id"].astype(object).to_numpy()})
            row = keys.merge(span_units[["trace_id", "span_id"]].assign(row=np.arange(len(span_units))),
                             on=["trace_id", "span_id"], how="left")["row"].to_numpy()
            matched = ~np.isnan(row)
            writer = span_units.iloc[row[matched].astype(np.int64)]  # the span that wrote each matched line
            frame.loc[matched, "service"] = writer["service"].to_numpy()
            frame.loc[matched, "op"] = writer["op"].to_numpy()
            frame.loc[matched, "timestamp"] = writer["start_time"].to_numpy()
            frame.loc[matched, "unit"] = -1 - row[matched].astype(np.int64)  # span units are negative
            time_order = logs["timestamp"].to_numpy()
        else:
            span_units, time_order = None, frame["timestamp"].to_numpy()
        keys = ["service", "op", "unit"]
        if width is not None:
            frame["bucket"] = frame["timestamp"].dt.floor(width)
            keys.append("bucket")
        frame = frame.assign(order=time_order).drop(columns="timestamp")
        frame = frame.drop_duplicates(keys + ["pattern", "order"]).sort_values(keys + ["order"], kind="stable")
        units = [frame[keys].drop_duplicates()]
        if span_units is not None:
            spans = pd.DataFrame({"service": span_units["service"].to_numpy(), "op": span_units["op"].to_numpy(),
                                  "unit": -1 - np.arange(len(span_units), dtype=np.int64)})
            if width is not None:
                spans["bucket"] = span_units["start_time"].dt.floor(width).to_numpy()
            units = [units[0][units[0]["op"] == NO_SPAN], spans]
        events = [frame[keys + ["pattern"]]]
        if self.pairs:
            events.append(consecutive_pairs(frame, keys))
        return pd.concat(events, ignore_index=True).drop_duplicates(), pd.concat(units, ignore_index=True)

    def _templates(self, logs: pd.DataFrame, traces: pd.DataFrame | None) -> np.ndarray:
        """Each line's template label, keyed by the peer service the line names (:mod:`detectors.logs.peers`)."""
        return label_peers(self.miner_.labels(logs["message"]), logs, traces, self.services_)

    # Fitting runs as two map/reduce rounds, whole (one part) or service by service on a Dask
    # cluster (``Detector.fit_calibrated_by_parts``); both learn the same state.
    fit_rounds = 2  # the parts' masked lines and names; then their units and patterns

    def _miner(self) -> TemplateMiner:
        return TemplateMiner(masks=self.masks, parser=self.parser, sim_th=self.sim_th, depth=self.depth)

    def fit_map(self, bundle: MeltBundle, step: int) -> dict[str, Any]:
        logs = self.require(bundle)
        if step == 0:  # each distinct masked line and when it first appears; the names
            return {"texts": first_seen(self._miner(), logs), "services": known_services(logs, bundle.traces)}
        events, units = self._events(logs, bundle.traces, self._templates(logs, bundle.traces), None)
        return dict(zip(("units", "baseline"), fit_baseline(events, units), strict=True))

    def fit_reduce(self, step: int, parts: list[dict[str, Any]]) -> None:
        if step == 0:  # the templates learned once from every part's lines (:func:`learn_pooled`)
            self.miner_ = self._miner()
            learn_pooled(self.miner_, [p["texts"] for p in parts])
            self.services_ = tuple(sorted(set().union(*(p["services"] for p in parts))))
            return
        self.units_ = pd.concat([p["units"] for p in parts]).groupby(level=[0, 1]).sum().sort_index()
        baseline = pd.concat([p["baseline"] for p in parts], ignore_index=True)
        self.baseline_ = (baseline.groupby(["service", "op", "pattern"], observed=True)["base_k"].sum()
                          .reset_index())
        self.template_text_ = {str(k): v for k, v in self.miner_.templates().items()}

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        logs = self.require(bundle)
        if logs.empty:
            return empty_scores()
        cells = self._cells(logs, bundle.traces, leave_out=False)
        if cells.empty:
            return empty_scores()
        k, n = cells["k"].to_numpy(float), cells["n"].to_numpy(float)
        base_k, base_n = cells["base_k"].to_numpy(float), cells["base_n"].to_numpy(float)
        change, error = share_change(cells)
        z = change / error
        kind = change_kind(base_k, z)
        codes, patterns = pd.factorize(cells["pattern"])
        text = np.array([self._describe(p) for p in patterns], dtype=object)[codes]  # once per distinct pattern
        peer = np.array([self._peer(p) for p in patterns], dtype=object)[codes]
        op = cells["op"].to_numpy(dtype=object)
        entity = np.where(op == NO_SPAN, text, op + ": " + text)
        evidence = [
            {"value": round(float(s), 3), "expected_range": [round(float(b), 3), round(float(b), 3)],
             "anomaly_type": a, "template": t, "operation": o or None, "units": int(m), "z": round(float(v), 2),
             "peer": p}
            for s, b, a, t, o, m, v, p in zip(k / n, base_k / base_n, kind, text, op, n, z, peer, strict=True)
        ]
        return pd.DataFrame({"timestamp": cells["bucket"].to_numpy(), "service": cells["service"].to_numpy(),
                             "detector": self.name, "entity": entity,
                             "score": self._confident_change(change, error), "evidence": evidence})

    def calibration_scores(self, bundle: MeltBundle) -> np.ndarray:
        """Each training window scored against the training baseline without that window.

        In-sample, a window is part of its own baseline, so the calibration would never see how far
        shares drift from one window to the next in normal operation (the request mix moves them),
        and every later drift would look rare.
        """
        logs = self.require(bundle)
        cells = self._cells(logs, bundle.traces, leave_out=True)
        return self._confident_change(*share_change(cells))

    def score_floor(self, raw: np.ndarray) -> np.ndarray | None:
        """A code path that changed in half an operation's calls is a fault even if the history had one.

        The raw score is an absolute effect size (a share of the calls), so it can speak for itself
        where quantile calibration cannot: a rolling refit's history that holds earlier faults tops
        the calibrated scale out at their scores (Nezha's fault cases, 7 minutes apart, at 3.9).
        Smaller changes keep their calibrated score, which knows how far shares drift.
        """
        return effect_size_floor(raw, self.alert_share)

    def _confident_change(self, change: np.ndarray, error: np.ndarray) -> np.ndarray:
        return confident_change(change, error, self.confidence_z)

    def _cells(self, logs: pd.DataFrame, traces: pd.DataFrame | None, leave_out: bool) -> pd.DataFrame:
        """Per (service, op, bucket, pattern): units with the pattern ``k``, units ``n``, and the baseline's.

        ``leave_out`` takes each cell's own counts out of the baseline (for data that is the training set).
        """
        events, units = self._events(logs, traces, self._templates(logs, traces), parse_duration(self.window))
        return pattern_cells(events, units, self.units_, self.baseline_, leave_out, self.min_units)

    def _describe(self, pattern: str) -> str:
        return PAIR.join(describe(part, self.template_text_) for part in pattern.split(PAIR))

    @staticmethod
    def _peer(pattern: str) -> str | None:
        """The service a pattern's lines name (the later line's, for a pair)."""
        named = [peer for part in pattern.split(PAIR) if (peer := split_peer(part)[1])]
        return named[-1] if named else None

    def _save_state(self, root: Path) -> None:
        import joblib

        self.miner_.save(root / "templates.json")
        joblib.dump({"baseline_": self.baseline_, "units_": self.units_, "template_text_": self.template_text_,
                     "services_": self.services_},
                    root / "state.joblib")

    def _load_state(self, root: Path) -> None:
        import joblib

        self.miner_ = self._miner()
        self.miner_.load(root / "templates.json")
        for key, value in joblib.load(root / "state.joblib").items():
            setattr(self, key, value)


def _spans(traces: pd.DataFrame | None) -> pd.DataFrame | None:
    """Spans as units: trace and span id, service, operation and start, or ``None`` without traces.

    The operation is the span's name, qualified by the endpoint the request entered its service
    through (:func:`detectors.span_tree.entry_rows`) where that is another span: one controller method behind two
    endpoints (``PriceController.query`` behind ``/prices/{routeId}`` and ``/prices/byRouteIds``)
    runs two code paths, and a line that only one of them logs would otherwise be expected in
    just part of the calls, so its vanishing could never count as a change in all of them.
    """
    needed = ["trace_id", "span_id", "service_name", "span_name", "start_time"]
    if traces is None or traces.empty or not set(needed) <= set(traces.columns):
        return None
    spans = traces[needed].rename(columns={"service_name": "service", "span_name": "op"}).reset_index(drop=True)
    if "parent_span_id" in traces.columns:
        entry = traces["span_name"].to_numpy(dtype=object)[entry_rows(traces)]
        name = spans["op"].to_numpy(dtype=object)
        spans["op"] = np.where(entry == name, name, entry + " > " + name)
    return spans
