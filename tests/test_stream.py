"""The stream detector's incident bookkeeping (melt/pipeline/stream.py), with a detector that alerts
on every service that has a span in a window."""

from __future__ import annotations

import pandas as pd

from melt.core.bundle import MeltBundle
from melt.core.config import load_settings
from melt.core.detector import Detector
from melt.pipeline.stream import StreamDetector

T0 = pd.Timestamp("2026-01-01 10:00", tz="UTC")
MINUTE = pd.Timedelta("1min")


class EveryService(Detector):
    """Score 10 (above the threshold) for every service with a span in a minute."""

    name, signal = "every_service", "traces"

    def fit(self, bundle: MeltBundle) -> EveryService:
        return self

    def detect(self, bundle: MeltBundle) -> pd.DataFrame:
        spans = bundle.traces
        rows = pd.DataFrame({"timestamp": spans["start_time"].dt.floor("1min"), "service": spans["service_name"]})
        rows = rows.drop_duplicates().reset_index(drop=True)
        return rows.assign(detector=self.name, entity=rows["service"], score=10.0, raw_score=10.0,
                           evidence=[{"value": 1.0}] * len(rows))


def spans(minute: int, edge: bool) -> pd.DataFrame:
    """A and B each serve a request; with ``edge``, A calls B."""
    rows = [{"trace_id": f"a{minute:04x}", "span_id": "01", "parent_span_id": None, "service_name": "A"},
            {"trace_id": f"b{minute:04x}", "span_id": "02", "parent_span_id": None, "service_name": "B"}]
    if edge:
        rows.append({"trace_id": f"a{minute:04x}", "span_id": "03", "parent_span_id": "01", "service_name": "B"})
    frame = pd.DataFrame(rows)
    return frame.assign(span_name="op", start_time=T0 + minute * MINUTE + pd.Timedelta("5s"), duration=5.0,
                        status_code=200)


def run(detector: StreamDetector, minutes: range, edge_from: int) -> list[tuple[str, str, list[str]]]:
    seen = []
    for minute in minutes:
        bundle = MeltBundle(traces=spans(minute, minute >= edge_from) if minute < 6 else None, validate=False)
        for update in detector.step(bundle, T0 + minute * MINUTE, T0 + (minute + 1) * MINUTE).updates:
            seen.append((update.incident_id, update.status, sorted(update.report["services"])))
    return seen


def test_an_incident_merged_into_another_by_a_later_edge_is_resolved_not_left_open() -> None:
    detector = StreamDetector({"every_service": EveryService()}, load_settings(env={}))
    seen = run(detector, range(14), edge_from=3)
    first, second = "INC-20260101T1000-001", "INC-20260101T1000-002"
    assert (first, "open", ["A"]) in seen and (second, "open", ["B"]) in seen  # apart while no call links them
    assert (first, "open", ["A", "B"]) in seen  # A -> B seen at minute 3: one incident
    assert (second, "resolved", ["B"]) in seen  # the other is closed with its last report
    assert (first, "resolved", ["A", "B"]) in seen
    assert detector.open_incidents() == 0


def test_a_restored_snapshot_goes_on_as_the_uninterrupted_stream() -> None:
    settings = load_settings(env={})
    straight = StreamDetector({"every_service": EveryService()}, settings)
    expected = run(straight, range(14), edge_from=3)
    interrupted = StreamDetector({"every_service": EveryService()}, settings)
    seen = run(interrupted, range(4), edge_from=3)
    resumed = StreamDetector({"every_service": EveryService()}, settings)
    resumed.restore(interrupted.snapshot())  # as after a restart
    seen += run(resumed, range(4, 14), edge_from=3)
    assert seen == expected
