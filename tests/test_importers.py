"""Importers: OTLP and Jaeger round trips on hand-written files, generic tables, the Nezha layout,
bad rows reported with their line, and one-line CLI errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from melt.cli import cli
from melt.core.bundle import MeltBundle
from melt.core.config import load_settings
from melt.core.errors import SourceError
from melt.importers import import_source
from melt.importers.otlp import bucket_quantile
from tests.conftest import REPO

DATA = REPO / "tests" / "fixtures"
NEZHA = REPO.parent / "shared" / "data" / "nezha-trainticket"
BOUTIQUE = REPO / "data" / "real" / "nezha-onlineboutique"  # unpacked from ../shared/data (see its README)
NS = 1_700_000_000_000_000_000


def imported(fmt: str, src: Path, out: Path, **kwargs) -> MeltBundle:
    import_source(fmt, src, out, load_settings(env={}), quiet=True, **kwargs)
    return MeltBundle.read(out)


def at(ns: int) -> pd.Timestamp:
    return pd.Timestamp(ns, unit="ns", tz="UTC")


# ------------------------------------------------------------------------------------------ OTLP
def test_otlp_spans_round_trip(tmp_path) -> None:
    spans = imported("otlp", DATA / "otlp" / "traces.jsonl", tmp_path / "b").traces.set_index("span_id")
    assert sorted(spans.index) == ["b7ad6b7169203331", "eee19b7ec3c1b174", "eee19b7ec3c1b175", "eee19b7ec3c1b176"]
    parents = spans["parent_span_id"]
    assert pd.isna(parents["eee19b7ec3c1b174"]) and pd.isna(parents["b7ad6b7169203331"])
    assert parents["eee19b7ec3c1b175"] == "eee19b7ec3c1b174"
    assert parents["eee19b7ec3c1b176"] == "eee19b7ec3c1b175"
    assert spans.loc["eee19b7ec3c1b176", "trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert spans["service_name"].to_dict() == {"eee19b7ec3c1b174": "frontend", "eee19b7ec3c1b175": "frontend",
                                               "eee19b7ec3c1b176": "cart-service", "b7ad6b7169203331": "cart-service"}
    assert spans.loc["eee19b7ec3c1b174", "start_time"] == at(NS)
    assert spans.loc["eee19b7ec3c1b176", "start_time"] == at(NS + 20_000_000)
    assert spans.loc["eee19b7ec3c1b176", "duration"] == pytest.approx(170.0005)  # ns precision kept
    assert spans["span_kind"].to_dict() == {"eee19b7ec3c1b174": "server", "eee19b7ec3c1b175": "client",
                                            "eee19b7ec3c1b176": "server", "b7ad6b7169203331": "consumer"}
    assert spans.loc["eee19b7ec3c1b174", "status_code"] == 200  # the HTTP status wins
    assert spans.loc["eee19b7ec3c1b175", "status_code"] == 500  # OTLP ERROR without HTTP status
    assert pd.isna(spans.loc["b7ad6b7169203331", "status_code"])
    assert spans.loc["eee19b7ec3c1b175", "attr.otel.status_description"] == "upstream timeout"
    assert spans.loc["eee19b7ec3c1b174", "attr.http.route"] == "/cart"
    assert spans.loc["eee19b7ec3c1b174", "attr.k8s.pod.name"] == "frontend-7d9f8c6b5-abcde"  # resource attribute
    assert str(spans.loc["eee19b7ec3c1b175", "attr.retry"]).lower() == "true"
    assert float(spans.loc["eee19b7ec3c1b176", "attr.db.rows"]) == 3.5
    assert json.loads(spans.loc["eee19b7ec3c1b176", "attr.tags"]) == ["a", "b"]


def test_otlp_logs_and_span_events(tmp_path) -> None:
    out = tmp_path / "b"
    for name in ("traces.jsonl", "logs.jsonl"):
        shutil.copy(DATA / "otlp" / name, tmp_path / name)
    logs = imported("otlp", tmp_path, out).logs.sort_values(["timestamp", "message"]).reset_index(drop=True)
    assert len(logs) == 3  # two log records and one exception event
    event, record, observed = logs.iloc[0], logs.iloc[1], logs.iloc[2]
    assert event["message"].startswith("exception exception.type=java.sql.SQLTimeoutException")
    assert (event["level"], event["span_id"]) == ("ERROR", "eee19b7ec3c1b176")
    assert record["message"] == "query timed out after 5000 ms" and record["level"] == "ERROR"
    assert record["timestamp"] == at(NS + 150_000_000) and record["instance"] == "cart-service-5f6d7c8b9-x1y2z"
    assert observed["timestamp"] == at(NS + 2_000_000_000)  # falls back to observedTimeUnixNano
    assert observed["level"] == "WARN" and json.loads(observed["message"]) == {"event": "cache miss", "ratio": 0.4}
    assert pd.isna(observed["trace_id"])


def test_otlp_metrics_gauges_rates_histograms_summaries(tmp_path) -> None:
    metrics = imported("otlp", DATA / "otlp" / "metrics.jsonl", tmp_path / "b").metrics
    value = metrics.set_index(["metric", "timestamp"])["value"]
    t0, t1 = at(NS), at(NS + 60_000_000_000)
    assert value[("process.cpu.utilization", t0)] == 0.25 and value[("process.cpu.utilization", t1)] == 0.75
    assert value[("http.server.requests{http.route=/items}.rate", t1)] == pytest.approx(1.0)  # 60 more in 60 s
    assert ("http.server.requests{http.route=/items}.rate", t0) not in value.index  # no rate without a previous point
    assert value[("queue.length", t0)] == 7.0  # a non-monotonic sum is a gauge
    assert value[("http.server.request.duration.mean", t1)] == pytest.approx(1200 / 20)
    assert value[("http.server.request.duration.p50", t1)] == pytest.approx(50.0)
    assert value[("http.server.request.duration.p95", t1)] == pytest.approx(95.0)
    assert value[("rpc.latency.p99", t1)] == 30.0
    assert set(metrics["instance"]) == {"cart-service-5f6d7c8b9-x1y2z"}


def test_bucket_quantile_interpolates_like_prometheus() -> None:
    bounds, counts = np.array([1.0, 2.0, 4.0]), np.array([0.0, 10.0, 10.0, 0.0])
    assert bucket_quantile(0.25, bounds, counts) == pytest.approx(1.5)
    assert bucket_quantile(0.75, bounds, counts) == pytest.approx(3.0)
    assert bucket_quantile(1.0, bounds, np.array([0.0, 0.0, 0.0, 5.0])) == 4.0  # +Inf bucket: highest bound


def test_corrupt_otlp_line_is_reported_with_its_number_and_the_rest_imported(tmp_path) -> None:
    lines = (DATA / "otlp" / "traces.jsonl").read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([lines[0], '{"resourceSpans": [{"resource": ', lines[1]]) + "\n")
    summary = import_source("otlp", broken, tmp_path / "b", load_settings(env={}), quiet=True)
    assert summary.rows["traces"] == 4
    assert summary.bad_rows.count == 1
    assert summary.bad_rows.examples[0].startswith(f"{broken}:2: not valid JSON")
    assert any("1 bad row(s) skipped" in line for line in summary.lines())
    with pytest.raises(SourceError, match=r"broken.jsonl:2: not valid JSON"):
        import_source("otlp", broken, tmp_path / "strict", load_settings(env={}), quiet=True, strict=True)


def test_otlp_span_without_ids_is_a_bad_row(tmp_path) -> None:
    source = tmp_path / "t.jsonl"
    service = [{"key": "service.name", "value": {"stringValue": "api"}}]
    request = {"resourceSpans": [{"resource": {"attributes": service}, "scopeSpans": [{"spans": [
        {"traceId": "", "spanId": "01", "name": "x", "startTimeUnixNano": "1700000000000000000",
         "endTimeUnixNano": "1700000000000000001"},
        {"traceId": "aa", "spanId": "02", "name": "y", "startTimeUnixNano": "1700000000000000000",
         "endTimeUnixNano": "1700000000000000001"}]}]}]}
    source.write_text(json.dumps(request) + "\n")
    summary = import_source("otlp", source, tmp_path / "b", load_settings(env={}), quiet=True)
    assert summary.rows == {"traces": 1}
    assert summary.bad_rows.examples == [f"{source}:1: column 'trace_id' is null"]


# ------------------------------------------------------------------------------------------ Jaeger
def test_jaeger_round_trip(tmp_path) -> None:
    bundle = imported("jaeger", DATA / "jaeger" / "trace.json", tmp_path / "b")
    spans = bundle.traces.set_index("span_id")
    assert spans["parent_span_id"].fillna("-").to_dict() == {
        "00f067aa0ba902b7": "-", "53995c3f42cd8ad8": "00f067aa0ba902b7", "a2fb4a1d1a96d312": "00f067aa0ba902b7"}
    assert spans["service_name"].to_dict() == {"00f067aa0ba902b7": "frontend", "53995c3f42cd8ad8": "driver",
                                               "a2fb4a1d1a96d312": "driver"}
    assert spans.loc["00f067aa0ba902b7", "start_time"] == at(NS)
    assert spans.loc["53995c3f42cd8ad8", "start_time"] == at(NS + 10_000_000)
    assert spans["duration"].to_dict() == {"00f067aa0ba902b7": 730.0, "53995c3f42cd8ad8": 22.5,
                                           "a2fb4a1d1a96d312": 1.5}
    assert spans["span_kind"].to_dict() == {"00f067aa0ba902b7": "server", "53995c3f42cd8ad8": "client",
                                            "a2fb4a1d1a96d312": "consumer"}  # FOLLOWS_FROM is asynchronous
    assert spans.loc["00f067aa0ba902b7", "status_code"] == 200 and spans.loc["53995c3f42cd8ad8", "status_code"] == 500
    assert spans.loc["53995c3f42cd8ad8", "attr.param.location"] == "728,326"
    assert spans.loc["53995c3f42cd8ad8", "attr.jaeger.version"] == "Go-2.30.0"  # process tag
    logs = bundle.logs.sort_values("timestamp").reset_index(drop=True)
    assert logs["message"].tolist() == ["redis timeout", "event=retrying attempt=2"]
    assert logs["level"].tolist() == ["ERROR", "INFO"]
    assert logs["timestamp"].tolist() == [at(NS + 20_000_000), at(NS + 21_000_000)]
    assert set(logs["span_id"]) == {"53995c3f42cd8ad8"} and set(logs["instance"]) == {"driver-7"}


def test_jaeger_lines_file_reports_a_corrupt_line(tmp_path) -> None:
    document = json.loads((DATA / "jaeger" / "trace.json").read_text())
    source = tmp_path / "traces.jsonl"
    source.write_text(json.dumps(document) + "\n{oops\n" + json.dumps(document["data"][0] | {"traceID": "x"}) + "\n")
    summary = import_source("jaeger", source, tmp_path / "b", load_settings(env={}), quiet=True)
    assert summary.rows["traces"] == 3 and summary.duplicate_spans == 3  # the same trace twice
    assert summary.bad_rows.examples == [f"{source}:2: not valid JSON (Expecting property name enclosed in "
                                         "double quotes at column 2)"]


# ------------------------------------------------------------------------------------------ tables
def test_wide_csv_metrics_with_epoch_ms_and_service_regex(tmp_path) -> None:
    source = tmp_path / "m.csv"
    source.write_text("ts,pod,cpu,mem\n"
                      "1700000000000,cart-5f6d7c8b9-x1y2z,0.5,100\n"
                      "1700000060000,cart-5f6d7c8b9-x1y2z,n/a,110\n"
                      "1700000060000,cart-5f6d7c8b9-x1y2z,0.7\n"
                      "not-a-time,cart-5f6d7c8b9-x1y2z,0.9,120\n")
    table = {"signal": "metrics", "map": {"ts": "timestamp", "pod": "instance"}, "wide": True,
             "time_unit": "ms", "service_from": "instance", "service_regex": r"^(?P<service>.+)-[^-]+-[^-]+$"}
    summary = import_source("csv", source, tmp_path / "b", load_settings(env={}), table=table, quiet=True)
    metrics = MeltBundle.read(tmp_path / "b").metrics
    assert len(metrics) == 4 and set(metrics["service"]) == {"cart"}
    assert set(metrics["metric"]) == {"cpu", "mem"}
    assert metrics["timestamp"].min() == at(NS)
    assert metrics["value"].isna().sum() == 1  # "n/a" is a gap, not a bad row
    examples = summary.bad_rows.examples
    assert summary.bad_rows.count == 3  # the short line, and the unreadable time (once per metric column)
    assert examples[0] == f"{source}:4: expected 4 fields, found 3"
    assert examples[1] == f"{source}:5: 'timestamp' is not a time"


def test_csv_spans_with_microsecond_durations_and_iso_times(tmp_path) -> None:
    source = tmp_path / "spans.csv"
    source.write_text("TraceID,SpanID,ParentID,Service,Op,Start,Dur\n"
                      "t1,a,root,api,GET /,2023-11-14T22:13:20Z,1500\n"
                      "t1,b,a,db,SELECT,2023-11-14T22:13:20.0005+00:00,250\n")
    table = {"signal": "traces", "duration_unit": "us",
             "map": {"TraceID": "trace_id", "SpanID": "span_id", "ParentID": "parent_span_id",
                     "Service": "service_name", "Op": "span_name", "Start": "start_time", "Dur": "duration"}}
    spans = imported("csv", source, tmp_path / "b", table=table).traces
    assert spans["duration"].tolist() == [1.5, 0.25]
    assert spans["start_time"].tolist() == [at(NS), at(NS + 500_000)]
    assert pd.isna(spans["parent_span_id"][0]) and spans["parent_span_id"][1] == "a"


def test_parquet_logs_without_level_column(tmp_path) -> None:
    frame = pd.DataFrame({"time": [NS // 10**9, NS // 10**9 + 1], "svc": ["api", "api"],
                          "line": ["2023-11-14 22:13:20 ERROR db down", "all good"]})
    frame.to_parquet(tmp_path / "logs.parquet")
    table = {"signal": "logs", "map": {"time": "timestamp", "svc": "service", "line": "message"}}
    logs = imported("parquet", tmp_path / "logs.parquet", tmp_path / "b", table=table).logs
    assert logs["level"].tolist() == ["ERROR", "INFO"] and logs["message"].tolist() == ["db down", "all good"]
    assert logs["timestamp"][0] == at(NS)


def test_table_mapping_errors_are_one_line(tmp_path) -> None:
    source = tmp_path / "m.csv"
    source.write_text("time,svc,metric,value\n1700000000,a,cpu,1\n")
    config = load_settings(env={})
    with pytest.raises(SourceError, match="mapped column 'pod' is not in the table"):
        import_source("csv", source, tmp_path / "b1", config, table={"map": {"pod": "instance"}}, quiet=True)
    with pytest.raises(SourceError, match=r"no 'timestamp' column for metrics \(map it with --map SOURCE=timestamp\)"):
        import_source("csv", source, tmp_path / "b2", config, table={"map": {"svc": "service"}}, quiet=True)
    with pytest.raises(SourceError, match="--wide only applies to --signal metrics"):
        import_source("csv", source, tmp_path / "b3", config, table={"signal": "logs", "wide": True}, quiet=True)


# ------------------------------------------------------------------------------------------ Nezha
def write_nezha_layout(root: Path) -> Path:
    """A two-minute miniature of the Nezha TrainTicket layout, with the defects the real data has."""
    date = root / "rca_data" / "2023-01-29"
    for part in ("trace", "log", "metric"):
        (date / part).mkdir(parents=True)
    header = "TraceID,SpanID,ParentID,PodName,OperationName,StartTimeUnixNano,EndTimeUnixNano,Duration\n"
    root_span = "t1,s1,root,ts-order-service-5b67c48447-mv5hb,/api/order,1674981768697000000,1674981769015316530,318316\n"
    child = "t1,s2,s1,ts-contacts-service-866bd68c97-xcqfx,findContacts,1674981768700000000,1674981768710000000,10000\n"
    (date / "trace" / "08_42_trace.csv").write_text(header + root_span + child)
    (date / "trace" / "08_43_trace.csv").write_text(header + child)  # a span repeated in the next minute
    log_header = "Timestamp,TimeUnixNano,Node,PodName,Container,TraceID,SpanID,Log\n"
    good = ('2023-01-29T08:42:48.700Z,1674981768700000000,n1,ts-contacts-service-866bd68c97-xcqfx,server,t1,s2,'
            '"{""log"":""16:42:48.700 ERROR  c.s.ContactsServiceImpl#37 [findContactsById][No contacts \\u003c id \\u003e]\\n"",'
            '""stream"":""stdout"",""time"":""2023-01-29T08:42:48.700Z""}"\n')
    garbage_time = good.replace("1674981768700000000", "-6795364578871345152")
    (date / "log" / "08_42_log.csv").write_text(log_header + good + "a,b,c\n" + garbage_time)
    (date / "metric" / "ts-contacts-service-866bd68c97-xcqfx_metric.csv").write_text(
        "Time,TimeStamp,PodName,CpuUsageRate(%),PodSuccessRate(%)\n"
        "2023-01-29 08:41:10 +0000 UTC,1674981670,ts-contacts-service-866bd68c97-xcqfx,3.2,100\n"
        "2023-01-29 08:42:10 +0000 UTC,1674981730,ts-contacts-service-866bd68c97-xcqfx,9.5,80\n")
    (date / "metric" / "front_service.csv").write_text(
        "Time,TimeStamp,ServiceName,SuccessRate(%),LatencyP50(s)\n2023-01-29 08:41:09 +0000 UTC,1674981669,Frontend,0,0.09\n")
    faults = {"08": [{"inject_time": "2023-01-29 08:42:30", "inject_timestamp": "1674953044",
                      "inject_pod": "ts-contacts-service-866bd68c97-xcqfx", "inject_type": "exception"}]}
    (date / "2023-01-29-fault_list.json").write_text(json.dumps(faults))
    return root


def test_nezha_layout(tmp_path) -> None:
    source = write_nezha_layout(tmp_path / "nezha")
    summary = import_source("nezha", source, tmp_path / "b", load_settings(env={}), quiet=True)
    bundle = MeltBundle.read(tmp_path / "b")
    assert summary.duplicate_spans == 1 and len(bundle.traces) == 2
    assert set(bundle.traces["service_name"]) == {"ts-order-service", "ts-contacts-service"}
    assert bundle.traces.set_index("span_id")["duration"]["s1"] == pytest.approx(318.316)
    assert summary.bad_rows.count == 1 and "08_42_log.csv:3: expected 8 fields, found 3" in summary.bad_rows.examples[0]
    logs = bundle.logs
    assert len(logs) == 2 and set(logs["level"]) == {"ERROR"}
    assert logs["message"][0] == "c.s.ContactsServiceImpl#37 [findContactsById][No contacts < id >]"
    assert logs["timestamp"].tolist() == [pd.Timestamp("2023-01-29T08:42:48.700Z")] * 2  # garbage ns -> Timestamp
    assert set(bundle.metrics["service"]) == {"ts-contacts-service", "frontend"}
    assert len(bundle.metrics) == 2 * 2 + 2
    assert bundle.truth["faults"] == [{
        "id": "2023-01-29-01", "root_cause_service": "ts-contacts-service",
        "root_cause_instance": "ts-contacts-service-866bd68c97-xcqfx", "type": "exception",
        "start": "2023-01-29T08:42:30+00:00", "end": "2023-01-29T08:45:30+00:00"}]
    provenance = json.loads((tmp_path / "b" / "import.json").read_text())
    assert provenance["format"] == "nezha" and provenance["duplicate_spans"] == 1


def test_nezha_directories_with_extra_files_a_broken_clock_and_edge_tables(tmp_path) -> None:
    """OnlineBoutique's metric/ holds a call graph, per-edge latency tables and one table dated 2028."""
    source = write_nezha_layout(tmp_path / "nezha")
    metric = source / "rca_data" / "2023-01-29" / "metric"
    (metric / "dependency.csv").write_text("Source,Target,Weight\nts-order-service,ts-contacts-service,1\n")
    (metric / "notes.txt.csv").write_text("just,some,words\n1,2,3\n")
    (metric / "ts-order-service-5b67c48447-mv5hb_metric.csv").write_text(  # 200,000,000 s ahead, like adservice
        "Time,TimeStamp,PodName,CpuUsageRate(%)\n"
        "2023-01-29 08:41:10 +0000 UTC,1874981670,ts-order-service-5b67c48447-mv5hb,3.2\n")
    edges = "time,timestamp,ts-order-service_ts-contacts-service\n2023-01-29 08:41:28 +0000 UTC,1674981688,{}\n"
    (metric.parent / "trace" / "README.csv").write_text("what,where\nspans,per minute\n")
    (metric / "source_50.csv").write_text(edges.format("0.012"))
    (metric / "destination_50.csv").write_text(edges.format("0.003"))
    summary = import_source("nezha", source, tmp_path / "b", load_settings(env={}), quiet=True)
    notes = "\n".join(summary.notes)
    assert "skipped" in notes and "dependency.csv: not a metric table (columns Source, Target, Weight)" in notes
    assert "notes.txt.csv: not a metric table" in notes
    assert "excluded" in notes and "ts-order-service-5b67c48447-mv5hb_metric.csv: its clock (2029-06-01" in notes
    assert "trace/README.csv: not a trace table (columns what, where)" in notes
    assert len(summary.notes) == 4 and "\n".join(summary.lines()).count("excluded") == 1
    metrics = MeltBundle.read(tmp_path / "b").metrics
    assert metrics["timestamp"].max() < pd.Timestamp("2023-01-30", tz="UTC")  # the 2028 table stretched nothing
    calls = metrics[metrics["peer"].notna()].set_index("metric")
    assert calls.loc["rpc.client.duration.p50", ["service", "peer", "value"]].tolist() == [
        "ts-order-service", "ts-contacts-service", 0.012]
    assert calls.loc["rpc.server.duration.p50", ["service", "peer", "value"]].tolist() == [
        "ts-contacts-service", "ts-order-service", 0.003]
    assert json.loads((tmp_path / "b" / "import.json").read_text())["notes"] == summary.notes


def test_split_edge_uses_known_service_names() -> None:
    from melt.importers.nezha import split_edge

    assert split_edge("frontend_cartservice", set()) == ("frontend", "cartservice")
    assert split_edge("my_app_other_svc", {"my_app", "other_svc"}) == ("my_app", "other_svc")


@pytest.mark.skipif(not NEZHA.is_dir(), reason="real Nezha data (../shared/data) not present")
def test_real_nezha_import(tmp_path) -> None:
    summary = import_source("nezha", NEZHA, tmp_path / "tt", load_settings(env={}), quiet=True)
    assert summary.faults == 28
    assert 320_000 <= summary.rows["traces"] <= 335_000
    assert 170_000 <= summary.rows["logs"] <= 175_000
    assert MeltBundle.read(tmp_path / "tt", signals=["metrics"]).metrics["service"].nunique() >= 45


# ------------------------------------------------------------------------------------------ CLI
def test_cli_import_and_its_errors(tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "b"
    result = runner.invoke(cli, ["import", "jaeger", str(DATA / "jaeger" / "trace.json"), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {out}: logs=2, traces=3")
    again = runner.invoke(cli, ["import", "jaeger", str(DATA / "jaeger" / "trace.json"), "--out", str(out)])
    assert again.exit_code == 2 and "already holds a bundle" in again.output and "--force" in again.output
    missing = runner.invoke(cli, ["import", "otlp", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "c")])
    assert missing.exit_code == 2 and missing.output.strip() == f"melt: error: import source not found: {tmp_path / 'nope.jsonl'}"
    bad_map = runner.invoke(cli, ["import", "csv", str(tmp_path), "--out", str(tmp_path / "d"), "--map", "x"])
    assert bad_map.exit_code == 2 and "--map takes SRC=DST" in bad_map.output
    assert len(bad_map.output.strip().splitlines()) == 1


@pytest.mark.skipif(not BOUTIQUE.is_dir(), reason="OnlineBoutique data not unpacked into data/real")
def test_real_onlineboutique_import(tmp_path) -> None:
    summary = import_source("nezha", BOUTIQUE, tmp_path / "ob", load_settings(env={}), quiet=True)
    assert summary.faults == 56
    assert sum("dependency.csv: not a metric table" in note for note in summary.notes) == 2
    excluded = [note for note in summary.notes if note.startswith("excluded")]
    assert len(excluded) == 1 and "2022-08-22/metric/adservice-" in excluded[0] and "(2028-" in excluded[0]
    metrics = MeltBundle.read(tmp_path / "ob", signals=["metrics"]).metrics
    assert metrics["timestamp"].max() < pd.Timestamp("2022-08-24", tz="UTC")
    edges = metrics[metrics["peer"].notna()]
    assert edges.groupby(["service", "peer"]).ngroups == 2 * 14  # 14 call edges, seen from both ends


def test_a_broken_clock_among_two_tables_excludes_only_itself(tmp_path) -> None:
    """With two tables the median cannot tell which clock is broken; the directory's date can."""
    date = tmp_path / "nezha" / "rca_data" / "2023-01-29"
    (date / "metric").mkdir(parents=True)
    row = "Time,TimeStamp,PodName,CpuUsageRate(%)\n2023-01-29 08:41:10 +0000 UTC,{},{}-5b67c48447-mv5hb,3.2\n"
    (date / "metric" / "a_metric.csv").write_text(row.format(1674981670, "ts-a-service"))
    (date / "metric" / "b_metric.csv").write_text(row.format(1874981670, "ts-b-service"))
    (date / "metric" / "c_metric.csv").write_text("Time,TimeStamp,PodName,CpuUsageRate(%)\n")  # no rows at all
    summary = import_source("nezha", tmp_path / "nezha", tmp_path / "b", load_settings(env={}), quiet=True)
    excluded = [note for note in summary.notes if note.startswith("excluded")]
    assert len(excluded) == 2 and "b_metric.csv: its clock (2029-" in excluded[0] and "c_metric.csv: no readable time" in excluded[1]
    assert set(MeltBundle.read(tmp_path / "b").metrics["service"]) == {"ts-a-service"}
