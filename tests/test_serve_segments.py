"""SegmentStore: group commit, reads by event time, backpressure, restart recovery, retention."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from melt.core.schema import validate_frame
from melt.serve.segments import Backpressure, SegmentStore

T0 = pd.Timestamp("2024-05-01 12:00", tz="UTC")


def logs(start: pd.Timestamp, n: int, service: str = "api", every: str = "1s") -> pd.DataFrame:
    frame = pd.DataFrame({"timestamp": pd.date_range(start, periods=n, freq=every), "service": service,
                          "level": "INFO", "message": [f"line {i}" for i in range(n)]})
    return validate_frame("logs", frame)


def spans(start: pd.Timestamp, ids: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({"trace_id": "t1", "span_id": ids, "parent_span_id": None, "span_name": "GET /",
                          "service_name": "api", "duration": 1.5,
                          "start_time": pd.date_range(start, periods=len(ids), freq="1s")})
    return validate_frame("traces", frame)


def store_at(folder: Path, **kwargs) -> SegmentStore:
    options = {"retention": pd.Timedelta(hours=1), "commit_interval": pd.Timedelta("30ms"),
               "max_pending_bytes": 2**26} | kwargs
    return SegmentStore(folder, **options)


def test_group_commit_writes_one_segment_per_signal_and_reads_by_time(tmp_path: Path) -> None:
    store = store_at(tmp_path, commit_interval=pd.Timedelta("300ms"))
    store.start()
    futures = [store.submit({"logs": logs(T0 + pd.Timedelta(minutes=i), 60)}) for i in range(3)]
    futures.append(store.submit({"traces": spans(T0, ["a", "b"])}))
    for future in futures:
        future.result(timeout=10)
    assert store.pending_bytes == 0
    assert [len(store.segments(s)) for s in ("logs", "traces")] == [1, 1]  # four requests, two files
    assert store.rows_written["logs"] == 180
    middle = store.read("logs", T0 + pd.Timedelta(minutes=1), T0 + pd.Timedelta(minutes=2))
    assert len(middle) == 60 and middle["timestamp"].is_monotonic_increasing
    assert middle["timestamp"].min() == T0 + pd.Timedelta(minutes=1)
    assert store.read("logs", T0 - pd.Timedelta(hours=1), T0).empty
    assert list(store.read("metrics", T0, T0 + pd.Timedelta(hours=1)).columns)[:2] == ["timestamp", "service"]
    bundle = store.bundle(T0, T0 + pd.Timedelta(hours=1))
    assert bundle.signals() == ["logs", "traces"] and len(bundle.logs) == 180 and len(bundle.traces) == 2
    assert store.min_time() == T0 and store.max_time() == T0 + pd.Timedelta(minutes=2, seconds=59)
    store.close()
    name = store.segments("logs")[0].path.name
    seq, low, high = name.removesuffix(".parquet").split("-")
    assert int(low) == T0.value and int(high) == store.max_time().value


def test_restart_recovers_segments_and_drops_unfinished_writes(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.start()
    store.submit({"logs": logs(T0, 10)}).result(timeout=10)
    store.submit({"traces": spans(T0, ["a"])}).result(timeout=10)
    store.close()
    with pytest.raises(Backpressure, match="shutting down"):
        store.submit({"logs": logs(T0, 1)})
    leftover = tmp_path / "segments" / "logs" / ".000000000009.tmp"
    leftover.write_bytes(b"half a parquet file")  # a write killed before its rename
    again = store_at(tmp_path)
    assert not leftover.exists()
    assert again.max_time() == T0 + pd.Timedelta(seconds=9) and again.min_time() == T0
    assert len(again.read("logs", T0, T0 + pd.Timedelta(hours=1))) == 10
    again.start()
    again.submit({"logs": logs(T0 + pd.Timedelta(minutes=5), 5)}).result(timeout=10)  # same span again: kept once
    again.submit({"traces": spans(T0, ["a"])}).result(timeout=10)
    again.close()
    sequence = [s.seq for s in again.segments("logs")] + [s.seq for s in again.segments("traces")]
    assert len(set(sequence)) == 4  # numbering went on after the restart
    assert len(again.read("logs", T0, T0 + pd.Timedelta(hours=1))) == 15
    assert again.read("traces", T0, T0 + pd.Timedelta(hours=1))["span_id"].tolist() == ["a"]


def test_backpressure_refuses_while_full_and_close_flushes(tmp_path: Path) -> None:
    store = store_at(tmp_path, max_pending_bytes=1000)  # the writer is not started: data stays pending
    first = store.submit({"logs": logs(T0, 50)})  # bigger than the limit, but nothing is pending: taken
    assert store.pending_bytes > 1000
    with pytest.raises(Backpressure) as refused:
        store.submit({"logs": logs(T0, 1)})
    assert 1.0 <= refused.value.retry_after <= 30.0
    with pytest.raises(Backpressure):
        store.check_capacity()
    store.close()  # writes what is pending
    assert first.done() and first.exception() is None and store.pending_bytes == 0
    assert len(store.read("logs", T0, T0 + pd.Timedelta(hours=1))) == 50


def test_bad_frames_and_failed_writes(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    with pytest.raises(ValueError, match="event time"):
        store.submit({"traces": spans(T0, ["a"]).assign(start_time=pd.NaT)})
    with pytest.raises(ValueError, match="unknown signal"):
        store.submit({"profiles": logs(T0, 1)})
    assert store.submit({}).result(timeout=1) is None
    store.start()
    folder = tmp_path / "segments" / "logs"
    folder.rmdir()
    folder.write_text("a file where the folder was: every write fails")
    future = store.submit({"logs": logs(T0, 2)})
    with pytest.raises(OSError):
        future.result(timeout=10)
    assert store.pending_bytes == 0 and not store.segments("logs")
    store.close()


def test_sweep_deletes_segments_past_retention(tmp_path: Path) -> None:
    store = store_at(tmp_path, retention=pd.Timedelta(minutes=30))
    store.start()
    for hours in (0, 1, 2):
        store.submit({"logs": logs(T0 + pd.Timedelta(hours=hours), 10)}).result(timeout=10)
    assert store.sweep() == 2  # newest row at 2:00:09, so rows before 1:30:09 go
    store.close()
    assert len(list((tmp_path / "segments" / "logs").iterdir())) == 1
    assert store.min_time() == T0 + pd.Timedelta(hours=2)
    assert store_at(tmp_path).sweep() == 0
    assert store_at(tmp_path / "empty").sweep() == 0


def test_segments_with_different_attribute_columns_read_as_one_frame(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.start()
    first = spans(T0, ["a1", "a2"]).assign(**{"attr.http.method": "GET"})
    second = spans(T0 + pd.Timedelta("5s"), ["b1"]).assign(**{"attr.db.system": "postgresql"})
    store.submit({"traces": first}).result(10)
    store.submit({"traces": second}).result(10)  # a later segment of its own
    store.close()
    read = store.read("traces", T0, T0 + pd.Timedelta("1min"))
    assert len(read) == 3 and len(store.segments("traces")) == 2
    assert read["attr.http.method"].notna().sum() == 2 and read["attr.db.system"].notna().sum() == 1


def test_compaction_merges_small_segments_and_survives_a_crash_half_way(tmp_path: Path) -> None:
    import json

    from melt.serve import compaction

    store = store_at(tmp_path, commit_interval=pd.Timedelta("1ms"))
    store.start()
    for minute in range(4):  # one segment per request
        store.submit({"logs": logs(T0 + pd.Timedelta(minutes=minute), 60)}).result(10)
    store.close()
    before = store.read("logs", T0, T0 + pd.Timedelta(hours=1))
    reader = store_at(tmp_path, read_only=True)
    assert reader.compact(T0 + pd.Timedelta(minutes=2)) == 2  # the two segments wholly before it
    reader.refresh()
    names = sorted(s.path.name for s in reader.segments("logs"))
    assert len(names) == 3 and sum(n.endswith(".c.parquet") for n in names) == 1
    pd.testing.assert_frame_equal(reader.read("logs", T0, T0 + pd.Timedelta(hours=1)), before)
    assert reader.compact(T0 + pd.Timedelta(minutes=2)) == 0  # a merged segment is not merged again

    # a crash after the journal and the rename, before the parts were deleted: recovery finishes it
    folder = tmp_path / "segments" / "logs"
    parts = sorted(p for p in folder.glob("*.parquet") if not p.name.endswith(".c.parquet"))
    copies = [folder / f"{p.stem}.bak" for p in parts]
    for part, copy in zip(parts, copies, strict=True):
        copy.write_bytes(part.read_bytes())
    bounds = [[int(x) for x in p.name.removesuffix(".parquet").split("-")] for p in parts]
    merged = compaction.merge(folder, parts, max(b[0] for b in bounds), min(b[1] for b in bounds),
                              max(b[2] for b in bounds), "timestamp")
    for part, copy in zip(parts, copies, strict=True):
        copy.rename(part)
    (folder / compaction.JOURNAL).write_text(json.dumps({"merged": merged.name, "temporary": "x.tmp",
                                                         "parts": [p.name for p in parts]}))
    restarted = store_at(tmp_path)
    pd.testing.assert_frame_equal(restarted.read("logs", T0, T0 + pd.Timedelta(hours=1)), before)
    assert not (folder / compaction.JOURNAL).exists()

    # a crash before the rename: the parts stay, the temporary file goes
    present = sorted(p.name for p in folder.glob("*.parquet"))
    (folder / ".half.tmp").write_bytes(b"partial")
    (folder / compaction.JOURNAL).write_text(json.dumps({"merged": "000000000099-1-2.c.parquet",
                                                         "temporary": ".half.tmp", "parts": present}))
    reader = store_at(tmp_path, read_only=True)
    reader.compact(T0)
    assert not (folder / ".half.tmp").exists() and not (folder / compaction.JOURNAL).exists()
    assert sorted(p.name for p in folder.glob("*.parquet")) == present  # every part kept
    pd.testing.assert_frame_equal(reader.read("logs", T0, T0 + pd.Timedelta(hours=1)), before)


def test_compaction_after_a_backlog_merges_one_file_per_step(tmp_path: Path) -> None:
    store = store_at(tmp_path, commit_interval=pd.Timedelta("1ms"))
    store.start()
    for second in range(0, 240, 20):  # four minutes, three segments a minute
        store.submit({"logs": logs(T0 + pd.Timedelta(seconds=second), 5)}).result(10)
    store.close()
    reader = store_at(tmp_path, read_only=True)
    assert reader.compact(T0 + pd.Timedelta(minutes=4), pd.Timedelta("1min")) == 12
    merged = [s for s in reader.segments("logs") if s.compacted]
    assert len(merged) == 4 and all(pd.Timestamp(s.high, tz="UTC") - pd.Timestamp(s.low, tz="UTC")
                                    < pd.Timedelta("1min") for s in merged)
    assert len(reader.read("logs", T0, T0 + pd.Timedelta(hours=1))) == 60
