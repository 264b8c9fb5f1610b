"""Bundle round trip and validation at the edge."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from melt.core.bundle import MeltBundle
from melt.core.errors import BundleError


def seed_style_spans() -> pd.DataFrame:
    """Spans in the shape the trace-anomaly seed tools write (no renaming allowed)."""
    return pd.DataFrame({
        "trace_id": ["t1", "t1", "t1"],
        "span_id": ["a", "b", "c"],
        "parent_span_id": [None, "a", "b"],
        "span_name": ["GET /", "query", "SELECT"],
        "service_name": ["frontend", "api", "db"],
        "duration": [12.5, 9.0, 3.0],
        "start_time": ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00.001Z", "2026-01-01T00:00:00.002Z"],
        "status_code": [200, 200, 200],
        "attr.http.method": ["GET", "GET", None],
    })


def test_round_trip_keeps_every_frame_and_truth(tiny_bundle: MeltBundle, tmp_path) -> None:
    tiny_bundle.write(tmp_path / "b")
    back = MeltBundle.read(tmp_path / "b")
    assert back.signals() == ["metrics", "logs", "traces", "events"]
    for name in back.signals():
        pd.testing.assert_frame_equal(back.frame(name), tiny_bundle.frame(name), check_dtype=False)
    assert back.truth == json.loads(json.dumps(tiny_bundle.truth))


def test_seed_tool_span_file_loads_without_renaming(tmp_path) -> None:
    seed_style_spans().to_parquet(tmp_path / "traces.parquet")
    bundle = MeltBundle.read(tmp_path)
    spans = bundle.frame("traces")
    assert str(spans["start_time"].dtype) == "datetime64[ns, UTC]"
    assert spans["parent_span_id"].isna().tolist() == [True, False, False]
    assert "attr.http.method" in spans.columns


def test_root_markers_are_normalised() -> None:
    spans = seed_style_spans().assign(parent_span_id=["root", "a", "b"])
    assert MeltBundle(traces=spans).traces["parent_span_id"].isna().sum() == 1


def test_epoch_timestamps_are_read_in_their_unit() -> None:
    logs = pd.DataFrame({"timestamp": [1_767_225_600_000], "service": ["a"], "level": ["warning"], "message": ["x"]})
    frame = MeltBundle(logs=logs).logs
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2026-01-01", tz="UTC")
    assert frame["level"].iloc[0] == "WARN"


@pytest.mark.parametrize(
    ("frame", "mutate", "message"),
    [
        ("traces", lambda df: df.drop(columns="service_name"), "traces: column 'service_name' is required"),
        ("traces", lambda df: df.iloc[:0], "traces: the frame is empty"),
        ("traces", lambda df: df.assign(duration=[-1.0, 2.0, 3.0]), "column 'duration' is negative"),
        ("traces", lambda df: df.assign(span_id=["a", "a", "c"]), "column 'span_id' is duplicated"),
        ("traces", lambda df: df.assign(duration=["x", "1", "2"]), "column 'duration' cannot be read as float"),
    ],
)
def test_invalid_frames_fail_with_one_line(tmp_path, frame, mutate, message) -> None:
    mutate(seed_style_spans()).to_parquet(tmp_path / f"{frame}.parquet")
    with pytest.raises(BundleError) as info:
        MeltBundle.read(tmp_path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_directory_and_corrupt_file(tmp_path) -> None:
    with pytest.raises(BundleError, match="bundle directory not found"):
        MeltBundle.read(tmp_path / "nope")
    (tmp_path / "metrics.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(BundleError, match="cannot read parquet"):
        MeltBundle.read(tmp_path)


def test_slice_time_keeps_whole_traces(tiny_bundle: MeltBundle) -> None:
    start, end = tiny_bundle.time_range()
    head = tiny_bundle.slice_time(None, start + (end - start) / 2)
    spans = head.frame("traces")
    assert set(spans["parent_span_id"].dropna()) <= set(spans["span_id"])
    assert head.frame("metrics")["timestamp"].max() < start + (end - start) / 2


def test_slice_time_keeps_a_traces_log_lines_with_it() -> None:
    """A request that starts before the cut and logs after it stays whole on the side where it began."""
    cut = pd.Timestamp("2026-01-01 00:10", tz="UTC")
    spans = pd.DataFrame({"trace_id": ["t1", "t1", "t2"], "span_id": ["a", "b", "c"], "parent_span_id": [None, "a", None],
                          "span_name": ["GET /", "SELECT", "GET /"], "service_name": ["api", "db", "api"],
                          "start_time": [cut - pd.Timedelta("2s"), cut + pd.Timedelta("1s"), cut + pd.Timedelta("5s")],
                          "duration": 5.0})
    logs = pd.DataFrame({"timestamp": [cut - pd.Timedelta("2s"), cut + pd.Timedelta("1s"), cut + pd.Timedelta("5s"),
                                       cut + pd.Timedelta("6s")],
                         "service": ["api", "db", "api", "cron"], "level": "INFO",
                         "message": ["received", "query ok", "received", "nightly job"],
                         "trace_id": ["t1", "t1", "t2", None], "span_id": ["a", "b", "c", None]})
    bundle = MeltBundle(logs=logs, traces=spans)
    before, after = bundle.slice_time(None, cut), bundle.slice_time(cut, None)
    assert before.frame("logs")["message"].tolist() == ["received", "query ok"]
    assert after.frame("logs")["message"].tolist() == ["received", "nightly job"]  # a line without a trace: its own time
    assert set(before.frame("traces")["span_id"]) == {"a", "b"}
