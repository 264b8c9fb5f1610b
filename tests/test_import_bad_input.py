"""Importers on bad input (issue 33): every way a user's file can be wrong ends as counted bad rows
or one ``melt: error:`` line, never a traceback.

A corpus of hand-written cases through the library and the CLI, then property tests that feed
random JSON, mutated OTLP/Jaeger documents, random CSV text and random bytes to the importers.
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melt.cli import cli
from melt.core.bundle import MeltBundle
from melt.core.config import load_settings
from melt.core.errors import MeltError, SourceError
from melt.importers import import_source, sources
from melt.importers.bad_rows import BadRows
from melt.importers.writer import BundleWriter
from tests.conftest import REPO, run_melt

FIXTURES = REPO / "tests" / "fixtures"
NS = 1_700_000_000_000_000_000
US = NS // 1000
SETTINGS = load_settings(env={})
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------ documents
OTLP_TRACE_EXAMPLE = {  # opentelemetry-proto examples/trace.json, as the OpenTelemetry docs show it
    "resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeSpans": [{
            "scope": {"name": "my.library", "version": "1.0.0",
                      "attributes": [{"key": "my.scope.attribute", "value": {"stringValue": "some scope attribute"}}]},
            "spans": [{
                "traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174",
                "parentSpanId": "EEE19B7EC3C1B173", "name": "I'm a server span",
                "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000", "kind": 2,
                "attributes": [{"key": "my.span.attr", "value": {"stringValue": "some value"}}],
            }],
        }],
    }],
}
OTLP_LOGS_EXAMPLE = {  # opentelemetry-proto examples/logs.json
    "resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeLogs": [{
            "scope": {"name": "my.library", "version": "1.0.0"},
            "logRecords": [{
                "timeUnixNano": "1544712660300000000", "observedTimeUnixNano": "1544712660300000000",
                "severityNumber": 10, "severityText": "Information",
                "traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174",
                "body": {"stringValue": "Example log record"},
                "attributes": [{"key": "string.attribute", "value": {"stringValue": "some string"}},
                               {"key": "array.attribute", "value": {"arrayValue": {"values": [
                                   {"stringValue": "many"}, {"stringValue": "values"}]}}}],
            }],
        }],
    }],
}


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2) + "\n"


def lines(*values: Any) -> str:
    return "".join(json.dumps(v) + "\n" for v in values)


def otlp_span(span_id: str = "eee19b7ec3c1b174", start: Any = str(NS), end: Any = str(NS + 10**6),
              **extra: Any) -> dict[str, Any]:
    return {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": span_id, "name": "GET /",
            "kind": 2, "startTimeUnixNano": start, "endTimeUnixNano": end, **extra}


def otlp_request(*spans: dict[str, Any], service: str = "api") -> dict[str, Any]:
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": list(spans)}]}]}


def attribute(key: str, value: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "value": value}]


def jaeger_span(span_id: str, process: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    span = {"traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": span_id, "operationName": "op",
            "references": [], "startTime": US, "duration": 1500, "tags": [], "logs": []}
    span |= {"process": process} if process is not None else {"processID": "p1"}
    return span | extra


def jaeger_trace(*spans: dict[str, Any]) -> dict[str, Any]:
    return {"traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spans": list(spans),
            "processes": {"p1": {"serviceName": "api", "tags": [{"key": "hostname", "value": "api-1"}]}}}


def three_jaeger_spans(bad: dict[str, Any]) -> dict[str, Any]:
    """A trace of three spans whose second has the fields of ``bad``."""
    return {"data": [jaeger_trace(jaeger_span("a1"), jaeger_span("a2") | bad, jaeger_span("a3"))]}


CSV_HEADER = "timestamp,service,metric,value\n"
LATIN = "timestamp,service,metric,value\n1700000000,caf\xe9,cpu,1\n".encode("latin-1")


# ------------------------------------------------------------------------------------------ corpus
@dataclass
class Case:
    """One bad input: its files, the import options, and the documented outcome.

    ``error``: the one-line MeltError it must raise (a regex); otherwise the import succeeds with
    at least ``rows`` rows per signal, exactly ``bad`` bad rows, and an example matching ``example``.
    """

    id: str
    fmt: str
    files: dict[str, str | bytes]
    error: str | None = None
    rows: dict[str, int] = field(default_factory=dict)
    bad: int = 0
    example: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)


def csv_case(id: str, text: str | bytes, name: str = "m.csv", **kwargs: Any) -> Case:
    return Case(id, "csv", {name: text}, **kwargs)


CASES = [
    # --- OTLP: whole documents and JSON lines
    Case("otlp-pretty-trace-document", "otlp", {"trace.json": pretty(OTLP_TRACE_EXAMPLE)}, rows={"traces": 1}),
    Case("otlp-pretty-logs-document", "otlp", {"logs.json": pretty(OTLP_LOGS_EXAMPLE)}, rows={"logs": 1}),
    Case("otlp-two-pretty-documents-in-one-file", "otlp",
         {"t.json": pretty(otlp_request(otlp_span("01"))) + pretty(otlp_request(otlp_span("02")))},
         rows={"traces": 2}),
    Case("otlp-corrupt-pretty-document", "otlp", {"t.json": pretty(OTLP_TRACE_EXAMPLE).replace('"kind": 2', '"kind" 2')},
         error=r"^nothing was imported: every row was bad \(1 bad row; first: .*t\.json:\d\d: not valid JSON"),
    Case("otlp-jsonl-first-line-corrupt", "otlp",
         {"t.jsonl": '{"resourceSpans": [\n' + lines(otlp_request(otlp_span("01")), otlp_request(otlp_span("02")))},
         rows={"traces": 2}, bad=1, example=r"t\.jsonl:1: not valid JSON"),
    Case("otlp-jsonl-with-byte-order-mark", "otlp", {"t.jsonl": "\ufeff" + lines(otlp_request(otlp_span()))},
         rows={"traces": 1}),
    Case("otlp-invalid-utf8-bytes-are-replaced", "otlp",
         {"t.jsonl": lines(otlp_request(otlp_span(name="caf\u00e9"))).encode().replace(b"\xc3\xa9", b"\xe9")},
         rows={"traces": 1}),
    Case("otlp-lone-surrogate-escape", "otlp", {"t.jsonl": lines(otlp_request(otlp_span())).replace("GET /", "\\ud800")},
         rows={"traces": 1}),
    # --- depth and size limits
    Case("otlp-nested-200000-deep", "otlp", {"deep.json": "[" * 200_000},
         error=r"^nothing was imported: .*deep\.json:1: JSON nested too deeply"),
    Case("otlp-deep-line-among-good-ones", "otlp",
         {"t.jsonl": lines(otlp_request(otlp_span())) + "[" * 200_000 + "\n"},
         rows={"traces": 1}, bad=1, example=r"t\.jsonl:2: JSON nested too deeply"),
    Case("jaeger-nested-200000-deep", "jaeger", {"deep.json": '{"data": ' + "[" * 200_000},
         error=r"deep\.json:1: JSON nested too deeply"),
    Case("otlp-line-over-the-limit", "otlp",
         {"t.jsonl": lines(otlp_request(otlp_span("01")), otlp_request(otlp_span("02", name="x" * 5000)))},
         limits={"MAX_LINE_BYTES": 2000}, rows={"traces": 1}, bad=1,
         example=r"t\.jsonl:2: line longer than 0 MiB"),
    Case("otlp-document-over-the-limit", "otlp", {"t.json": pretty(OTLP_TRACE_EXAMPLE)},
         limits={"MAX_DOCUMENT_BYTES": 300}, error=r"t\.json:1: JSON document larger than 0 MiB"),
    Case("otlp-integer-of-5000-digits", "otlp",
         {"t.jsonl": lines(otlp_request(otlp_span("01"))) + '{"resourceSpans": ' + "9" * 5000 + "}\n"},
         rows={"traces": 1}, bad=1, example=r"t\.jsonl:2: not valid JSON \(Exceeds the limit"),
    # --- OTLP: what is not a request, items with a bad field
    Case("otlp-empty-file", "otlp", {"t.jsonl": ""}, error=r"^nothing was imported: the source holds no rows$"),
    Case("otlp-blank-lines-only", "otlp", {"t.jsonl": "\n \n\t\n"}, error=r"the source holds no rows"),
    Case("otlp-scalar-document", "otlp", {"t.json": "42\n"}, error=r"t\.json:1: not a JSON object .*a number"),
    Case("otlp-jaeger-document-given-to-otlp", "otlp", {"t.json": (FIXTURES / "jaeger" / "trace.json").read_text()},
         error=r"t\.json:1: not an OTLP request: no resourceSpans.*\(keys: data, .*\); a Jaeger export\? use 'melt import jaeger'"),
    Case("otlp-resource-spans-not-a-list", "otlp", {"t.jsonl": lines({"resourceSpans": "oops"})},
         error=r"not OTLP/JSON \('resourceSpans' is a string, not a list\)"),
    Case("otlp-start-time-1e22-ns", "otlp",
         {"t.jsonl": lines(otlp_request(otlp_span("01"), otlp_span("02", start=str(10**22))))},
         rows={"traces": 1}, bad=1,
         example=r"t\.jsonl:1: bad span '02' \(startTimeUnixNano 10{22} is out of range"),
    Case("otlp-start-time-year-1800", "otlp",
         {"t.jsonl": lines(otlp_request(otlp_span("01"), otlp_span("02", start=str(-5_364_662_400 * 10**9))))},
         rows={"traces": 1}, bad=1, example=r"column 'start_time' is not a plausible time \(before 1990"),
    Case("otlp-start-time-year-2256", "otlp",
         {"t.jsonl": lines(otlp_request(otlp_span("01"), otlp_span("02", start=str(9 * 10**18),
                                                                   end=str(9 * 10**18 + 10**6))))},
         rows={"traces": 1}, bad=1, example=r"'start_time' is not a plausible time"),
    Case("otlp-start-time-not-a-number", "otlp",
         {"t.jsonl": lines(otlp_request(otlp_span("01"), otlp_span("02", start="soon")))},
         rows={"traces": 1}, bad=1, example=r"bad span '02' \(startTimeUnixNano \"soon\" is not a number of nanoseconds\)"),
    Case("otlp-start-time-infinity", "otlp",
         {"t.jsonl": lines(otlp_request(otlp_span("01"))).replace(f'"{NS}"', "Infinity")},
         error=r"startTimeUnixNano Infinity is not a number of nanoseconds"),
    Case("otlp-attributes-not-a-list", "otlp",
         {"t.jsonl": lines(otlp_request(otlp_span("01"), otlp_span("02", attributes={"a": 1})))},
         rows={"traces": 1}, bad=1, example=r"bad span '02' \(attributes are an object, not a list\)"),
    Case("otlp-http-status-garbage", "otlp",
         {"t.jsonl": lines(otlp_request(otlp_span("01"), otlp_span(
             "02", attributes=attribute("http.status_code", {"stringValue": "teapot"}))))},
         rows={"traces": 1}, bad=1, example=r"bad span '02'"),
    Case("otlp-attribute-typed-differently-per-span", "otlp",
         {"t.jsonl": lines(otlp_request(otlp_span("01", attributes=attribute("x", {"intValue": "10"})),
                                        otlp_span("02", attributes=attribute("x", {"stringValue": "ten"})),
                                        otlp_span("03", attributes=attribute("x", {"intValue": str(10**30)})),
                                        otlp_span("04", attributes=attribute("x", {"stringValue": {"a": [1]}}))))},
         rows={"traces": 4}),
    Case("otlp-not-gzip", "otlp", {"t.jsonl.gz": lines(otlp_request(otlp_span()))},
         error=r"t\.jsonl\.gz: not a gzip file"),
    Case("otlp-truncated-gzip", "otlp", {"t.json.gz": gzip.compress(lines(otlp_request(otlp_span())).encode())[:-12]},
         error=r"t\.json\.gz: corrupt or truncated gzip data"),
    Case("otlp-gzip-document", "otlp", {"t.json.gz": gzip.compress(pretty(OTLP_TRACE_EXAMPLE).encode())},
         rows={"traces": 1}),
    Case("otlp-strict-stops-at-the-first-bad-span", "otlp",
         {"t.jsonl": lines(otlp_request(otlp_span("01"), otlp_span("02", start="soon")))},
         options={"strict": True}, error=r"t\.jsonl:1: bad span '02' .*\(strict import stops at the first bad row\)$"),
    # --- Jaeger shapes
    Case("jaeger-api-response-pretty", "jaeger", {"t.json": (FIXTURES / "jaeger" / "trace.json").read_text()},
         rows={"traces": 3, "logs": 2}),
    Case("jaeger-list-of-traces", "jaeger",
         {"t.json": pretty(json.loads((FIXTURES / "jaeger" / "trace.json").read_text())["data"])},
         rows={"traces": 3}),
    Case("jaeger-bare-span-array", "jaeger",
         {"t.json": pretty([jaeger_span("a1", {"serviceName": "api", "tags": []}),
                            jaeger_span("a2", {"serviceName": "db"}, references=[
                                {"refType": "CHILD_OF", "spanID": "a1"}])])},
         rows={"traces": 2}),
    Case("jaeger-bare-span-array-with-process-ids", "jaeger", {"t.json": json.dumps([jaeger_span("a1"), jaeger_span("a2")])},
         rows={"traces": 2}),
    Case("jaeger-one-span-per-line", "jaeger",
         {"t.jsonl": lines(jaeger_span("a1", {"serviceName": "api"}), jaeger_span("a2", {"serviceName": "api"}))},
         rows={"traces": 2}),
    Case("jaeger-non-numeric-duration-drops-one-span", "jaeger", {"t.json": pretty(three_jaeger_spans({"duration": "slow"}))},
         rows={"traces": 2}, bad=1, example=r"t\.json:1: bad span 'a2' \(duration \"slow\" is not a number of microseconds\)"),
    Case("jaeger-missing-span-id-drops-one-span", "jaeger",
         {"t.json": pretty({"data": [jaeger_trace(jaeger_span("a1"), {k: v for k, v in jaeger_span("a2").items()
                                                                       if k != "spanID"}, jaeger_span("a3"))]})},
         rows={"traces": 2}, bad=1, example=r"column 'span_id' is null"),
    Case("jaeger-start-time-1e30", "jaeger", {"t.json": pretty(three_jaeger_spans({"startTime": 10**30}))},
         rows={"traces": 2}, bad=1, example=r"'start_time' is out of range as epoch us"),
    Case("jaeger-references-not-objects", "jaeger", {"t.json": pretty(three_jaeger_spans({"references": ["a1"]}))},
         rows={"traces": 2}, bad=1, example=r"bad span 'a2' \('references' is not a list of objects\)"),
    Case("jaeger-tag-values-of-every-type", "jaeger",
         {"t.json": pretty(three_jaeger_spans({"tags": [{"key": "k", "value": {"deep": [1, 2]}}]}))},
         rows={"traces": 3}),
    Case("jaeger-spans-not-a-list", "jaeger", {"t.json": pretty({"data": [{"spans": {"a": 1}}]})},
         error=r"not a Jaeger trace \('spans' is an object, not a list\)"),
    Case("jaeger-api-error-response", "jaeger",
         {"t.json": json.dumps({"data": None, "errors": [{"code": 400, "msg": "bad service"}]})},
         error=r"t\.json:1: a Jaeger API error response"),
    Case("jaeger-corrupt-pretty-document", "jaeger",
         {"t.json": (FIXTURES / "jaeger" / "trace.json").read_text().replace('"duration": 22500,', '"duration": 22500')},
         error=r"t\.json:\d\d: not valid JSON \(Expecting ',' delimiter"),
    Case("jaeger-not-gzip", "jaeger", {"t.json.gz": "{}"}, error=r"t\.json\.gz: not a gzip file"),
    Case("jaeger-unknown-shape", "jaeger", {"t.json": '{"traces": []}'},
         error=r"neither a Jaeger trace.*an object with keys traces"),
    # --- CSV: delimiter, encoding, times
    csv_case("csv-semicolon-separated", "timestamp;service;metric;value\n1700000000;a;cpu;1\n",
             error=r"m\.csv:1: the header is one column .* looks like ';'-separated: pass --delimiter ';'"),
    csv_case("csv-tab-separated", "timestamp\tservice\tmetric\tvalue\n1700000000\ta\tcpu\t1\n",
             error=r"looks like '\\t'-separated: pass --delimiter '\\t'$"),
    csv_case("csv-tab-separated-with-delimiter-tab", "timestamp\tservice\tmetric\tvalue\n1700000000\ta\tcpu\t1\n",
             options={"table": {"delimiter": "tab"}}, rows={"metrics": 1}),
    csv_case("csv-empty-delimiter", CSV_HEADER + "1700000000,a,cpu,1\n", options={"table": {"delimiter": ""}},
             error=r"--delimiter must be exactly one character .*got ''"),
    csv_case("csv-two-character-delimiter", CSV_HEADER + "1700000000,a,cpu,1\n", options={"table": {"delimiter": ";;"}},
             error=r"--delimiter must be exactly one character .*got ';;'"),
    csv_case("csv-latin1-read-as-utf8", LATIN, error=r"m\.csv:2: not valid UTF-8 text; pass --encoding"),
    csv_case("csv-latin1-with-encoding", LATIN, options={"encoding": "latin-1"}, rows={"metrics": 1}),
    csv_case("csv-unknown-encoding", LATIN, options={"encoding": "klingon"}, error=r"--encoding: unknown encoding 'klingon'"),
    csv_case("csv-utf8-read-as-utf16", CSV_HEADER + "1700000000,a,cpu,1\n", options={"encoding": "utf-16"},
             error=r"m\.csv: (not valid utf-16 text|.*no 'timestamp' column)"),
    csv_case("csv-byte-order-mark", "\ufeff" + CSV_HEADER + "1700000000,a,cpu,1\n", rows={"metrics": 1}),
    csv_case("csv-epoch-ms-read-as-seconds", CSV_HEADER + "1700000000000,a,cpu,1\n1700000060000,a,cpu,2\n",
             options={"table": {"time_unit": "s"}},
             error=r"^nothing was imported: every row was bad \(2 bad rows; first: .*m\.csv:2: 'timestamp' is out of "
                   r"range as epoch s .*check --time-unit\); .*m\.csv:3: "),
    csv_case("csv-years-1800-2256-2300", CSV_HEADER + "2023-11-14T22:13:20Z,a,cpu,1\n1800-01-01,a,cpu,1\n"
             "2256-01-01T00:00:00Z,a,cpu,1\n2300-01-01,a,cpu,1\n", rows={"metrics": 1}, bad=3,
             example=r"m\.csv:5: 'timestamp' is out of range \(a time must lie between 1677 and 2262\)"),
    csv_case("csv-not-gzip", CSV_HEADER, name="m.csv.gz", error=r"m\.csv\.gz: not a gzip file"),
    csv_case("csv-empty-file", "", error=r"m\.csv: empty file"),
    csv_case("csv-header-only", CSV_HEADER, error=r"the source holds no rows"),
    csv_case("csv-repeated-column", "timestamp,service,metric,value,value\n1700000000,a,cpu,1,2\n",
             error=r"column 'value' appears twice"),
    csv_case("csv-short-row-counted", CSV_HEADER + "1700000000,a,cpu,1\n1700000000,a\n", rows={"metrics": 1}, bad=1,
             example=r"m\.csv:3: expected 4 fields, found 2"),
    csv_case("csv-short-row-strict", CSV_HEADER + "1700000000,a,cpu,1\n1700000000,a\n", options={"strict": True},
             error=r"^[^ ]*m\.csv:3: expected 4 fields, found 2 \(strict import stops at the first bad row\)$"),
    csv_case("csv-only-bad-rows-names-them", CSV_HEADER + "x,a,cpu,1\ny,a,cpu,1\nz,a,cpu,1\nw,a,cpu,1\n",
             error=r"\(4 bad rows; first: [^;]*m\.csv:2: 'timestamp' is not a time; [^;]*m\.csv:3: [^;]*; "
                   r"[^;]*m\.csv:4: 'timestamp' is not a time\)$"),
    Case("parquet-corrupt", "parquet", {"m.parquet": b"PAR1 not really"}, error=r"m\.parquet: cannot read parquet"),
]


def write_files(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", errors="surrogatepass")
    return root / next(iter(files)) if len(files) == 1 else root


def run_import(fmt: str, src: Path, out: Path, **options: Any) -> Any:
    return import_source(fmt, src, out, SETTINGS, quiet=True, **options)


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in case.limits.items():
        monkeypatch.setattr(sources, name, value)
    src = write_files(tmp_path / "src", case.files)
    if case.error is not None:
        with pytest.raises(MeltError) as raised:
            run_import(case.fmt, src, tmp_path / "out", **case.options)
        message = str(raised.value)
        assert "\n" not in message and re.search(case.error, message), message
        return
    summary = run_import(case.fmt, src, tmp_path / "out", **case.options)
    for signal, count in case.rows.items():
        assert summary.rows.get(signal, 0) >= count, summary.lines()
    assert summary.bad_rows.count == case.bad, summary.lines()
    if case.example is not None:
        assert any(re.search(case.example, e) for e in summary.bad_rows.examples), summary.bad_rows.examples
    MeltBundle.read(tmp_path / "out")  # what was written is a valid bundle


def test_pretty_otlp_document_keeps_its_fields(tmp_path: Path) -> None:
    source = write_files(tmp_path, {"trace.json": pretty(OTLP_TRACE_EXAMPLE)})
    assert len(source.read_text().splitlines()) > 30
    run_import("otlp", source, tmp_path / "b")
    span = MeltBundle.read(tmp_path / "b").traces.iloc[0]
    assert (span["span_id"], span["parent_span_id"], span["service_name"]) == (
        "eee19b7ec3c1b174", "eee19b7ec3c1b173", "my.service")
    assert span["start_time"] == pd.Timestamp(1544712660, unit="s", tz="UTC") and span["duration"] == 1000.0
    assert span["attr.my.span.attr"] == "some value"


def test_jaeger_bad_span_is_dropped_alone_and_process_ids_stand_in(tmp_path: Path) -> None:
    source = write_files(tmp_path, {"t.json": pretty(three_jaeger_spans({"duration": "slow"}))})
    summary = run_import("jaeger", source, tmp_path / "b")
    spans = MeltBundle.read(tmp_path / "b").traces
    assert sorted(spans["span_id"]) == ["a1", "a3"] and set(spans["service_name"]) == {"api"}
    bare = write_files(tmp_path / "bare", {"t.json": json.dumps([jaeger_span("a1")])})
    summary = run_import("jaeger", bare, tmp_path / "c")
    assert MeltBundle.read(tmp_path / "c").traces["service_name"].tolist() == ["p1"]
    assert any("processID p1 without a 'processes' map" in note for note in summary.notes)


def test_parquet_times_beyond_nanoseconds_are_bad_rows(tmp_path: Path) -> None:
    table = pa.table({"timestamp": pa.array([1_700_000_000_000, 40_000_000_000_000], type=pa.timestamp("ms")),
                      "service": ["a", "a"], "metric": ["cpu", "cpu"], "value": [1.0, 2.0]})
    pq.write_table(table, tmp_path / "m.parquet")
    summary = run_import("parquet", tmp_path / "m.parquet", tmp_path / "b")
    assert summary.rows == {"metrics": 1} and summary.bad_rows.count == 1
    assert "m.parquet:2: 'timestamp' is out of range" in summary.bad_rows.examples[0]


def test_an_attribute_typed_differently_in_two_parts_becomes_text(tmp_path: Path) -> None:
    writer = BundleWriter(tmp_path / "b", BadRows(), chunk_rows=1, quiet=True)
    row = {"trace_id": "t", "parent_span_id": None, "span_name": "x", "service_name": "api", "duration": 1.0,
           "start_time": NS, "_line": 1}
    writer.add_records("traces", [row | {"span_id": "a", "attr.x": 10}], "f", time_unit="ns")
    writer.add_records("traces", [row | {"span_id": "b", "attr.x": "ten"}], "f", time_unit="ns")
    writer.add_records("traces", [row | {"span_id": "c", "attr.x": 10**30}], "f", time_unit="ns")
    assert writer.finish().rows == {"traces": 3}
    spans = MeltBundle.read(tmp_path / "b").traces.set_index("span_id")
    assert spans["attr.x"].to_dict() == {"a": "10", "b": "ten", "c": str(10**30)}


# ------------------------------------------------------------------------------------------ CLI
@dataclass
class CliCase:
    id: str
    files: dict[str, str | bytes]
    args: list[str]
    error: str


CLI_CASES = [
    CliCase("deep-nesting", {"deep.json": "[" * 200_000}, ["otlp"], r"deep\.json:1: JSON nested too deeply"),
    CliCase("pretty-document-without-service", {"t.json": pretty(otlp_request(otlp_span()) | {"resourceSpans": [
        {"scopeSpans": [{"spans": [otlp_span()]}]}]})}, ["otlp"], r"t\.json:1: column 'service_name' is null"),
    CliCase("not-gzip", {"t.jsonl.gz": "{}"}, ["otlp"], r"t\.jsonl\.gz: not a gzip file"),
    CliCase("empty-delimiter", {"m.csv": CSV_HEADER}, ["csv", "--delimiter", ""],
            r"--delimiter must be exactly one character"),
    CliCase("double-delimiter", {"m.csv": CSV_HEADER}, ["csv", "--delimiter", ";;"],
            r"--delimiter must be exactly one character .*';;'"),
    CliCase("unknown-encoding", {"m.csv": CSV_HEADER}, ["csv", "--encoding", "nope"], r"--encoding: unknown encoding 'nope'"),
    CliCase("not-utf8", {"m.csv": LATIN}, ["csv"], r"m\.csv:2: not valid UTF-8 text; pass --encoding"),
    CliCase("semicolon-hint", {"m.csv": "a;b;c\n1;2;3\n"}, ["csv"], r"looks like ';'-separated: pass --delimiter ';'$"),
    CliCase("ms-as-seconds", {"m.csv": CSV_HEADER + "1700000000000,a,cpu,1\n"}, ["csv", "--time-unit", "s"],
            r"nothing was imported: every row was bad \(1 bad row; first: .*out of range as epoch s"),
    CliCase("strict-csv", {"m.csv": CSV_HEADER + "1,a\n"}, ["csv", "--strict"],
            r"m\.csv:2: expected 4 fields, found 2 \(strict import stops at the first bad row\)$"),
    CliCase("strict-otlp", {"t.jsonl": "{oops\n"}, ["otlp", "--strict"], r"t\.jsonl:1: not valid JSON"),
    CliCase("strict-jaeger-span", {"t.json": pretty(three_jaeger_spans({"duration": None}))}, ["jaeger", "--strict"],
            r"bad span 'a2' \(duration null is not a number of microseconds\)"),
    CliCase("otlp-time-1e22", {"t.jsonl": lines(otlp_request(otlp_span(start=str(10**22))))}, ["otlp"],
            r"startTimeUnixNano 10{22} is out of range"),
    CliCase("truncated-gzip", {"t.csv.gz": gzip.compress(CSV_HEADER.encode() * 100)[:30]}, ["csv"],
            r"t\.csv\.gz: (corrupt or truncated gzip data|cannot read)"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input_is_one_error_line(case: CliCase, tmp_path: Path) -> None:
    src = write_files(tmp_path / "src", case.files)
    fmt, *options = case.args
    result = CliRunner().invoke(cli, ["import", fmt, str(src), "--out", str(tmp_path / "out"), "--quiet", *options])
    output = result.output
    assert result.exit_code == 2, output
    assert len(output.splitlines()) == 1 and output.startswith("melt: error: "), output
    assert "Traceback" not in output and "Exception ignored" not in output
    assert re.search(case.error, output.strip()), output


def test_strict_csv_prints_exactly_one_line_in_a_real_process(tmp_path: Path) -> None:
    """pyarrow calls the bad-row handler from C; an exception raised there was printed as
    "Exception ignored ... Traceback" before the error line."""
    (tmp_path / "m.csv").write_text(CSV_HEADER + "1700000000,a,cpu,1\n1700000000,a\n")
    done = run_melt("import", "csv", str(tmp_path / "m.csv"), "--out", str(tmp_path / "b"), "--strict")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"melt: error: {tmp_path / 'm.csv'}:3: expected 4 fields, found 2 "
                                        "(strict import stops at the first bad row)"]


# ------------------------------------------------------------------------------------------ properties
NUMBER_TEXT = st.sampled_from(["1700000000000000000", "1e22", "-1", "NaN", "0x10", "", " ", "１２"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=12)
    | NUMBER_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8) | NUMBER_TEXT, children,
                                                                     max_size=4),
    max_leaves=16,
)


def outcome(fmt: str, files: dict[str, str | bytes], **options: Any) -> None:
    """Import ``files``: it must succeed or raise a MeltError, nothing else."""
    with tempfile.TemporaryDirectory() as tmp:
        src = write_files(Path(tmp) / "src", files)
        try:
            run_import(fmt, src, Path(tmp) / "out", **options)
        except MeltError as exc:
            assert "\n" not in str(exc)


def mutate(data: st.DataObject, value: Any, depth: int) -> Any:
    """``value`` with the subtree ``depth`` levels down a random path replaced by random JSON."""
    if depth == 0 or not isinstance(value, dict | list) or not value:
        return data.draw(JSON_VALUES)
    if isinstance(value, dict):
        key = data.draw(st.sampled_from(sorted(value)))
        return value | {key: mutate(data, value[key], depth - 1)}
    index = data.draw(st.integers(0, len(value) - 1))
    return [*value[:index], mutate(data, value[index], depth - 1), *value[index + 1:]]


def mutated(data: st.DataObject, document: Any) -> Any:
    """One to three random subtrees of ``document`` replaced, mostly deep down (spans, attributes, times)."""
    for _ in range(data.draw(st.integers(1, 3))):
        document = mutate(data, document, data.draw(st.integers(1, 10)))
    return document


OTLP_REQUESTS = [json.loads(line) for name in ("traces.jsonl", "logs.jsonl", "metrics.jsonl")
                 for line in (FIXTURES / "otlp" / name).read_text().splitlines()]
JAEGER_DOCUMENT = json.loads((FIXTURES / "jaeger" / "trace.json").read_text())


@PROPERTY
@given(value=JSON_VALUES, indent=st.sampled_from([None, 2]), fmt=st.sampled_from(["otlp", "jaeger"]))
def test_random_json_documents(value: Any, indent: int | None, fmt: str) -> None:
    outcome(fmt, {"x.json": json.dumps(value, indent=indent)})


@PROPERTY
@given(values=st.lists(JSON_VALUES, min_size=1, max_size=5), fmt=st.sampled_from(["otlp", "jaeger"]))
def test_random_json_lines(values: list[Any], fmt: str) -> None:
    outcome(fmt, {"x.jsonl": lines(*values)})


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), pretty_printed=st.booleans())
def test_mutated_otlp_requests(data: st.DataObject, pretty_printed: bool) -> None:
    requests = [mutated(data, r) for r in data.draw(st.lists(st.sampled_from(OTLP_REQUESTS), min_size=1, max_size=3))]
    text = "".join(pretty(r) for r in requests) if pretty_printed else lines(*requests)
    outcome("otlp", {"x.json": text}, strict=data.draw(st.booleans()))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), pretty_printed=st.booleans())
def test_mutated_jaeger_documents(data: st.DataObject, pretty_printed: bool) -> None:
    document = mutated(data, JAEGER_DOCUMENT)
    shape = data.draw(st.sampled_from(["api", "traces", "spans"]))
    if shape == "traces" and isinstance(document, dict) and isinstance(document.get("data"), list):
        document = document["data"]
    elif shape == "spans" and isinstance(document, dict) and isinstance(document.get("data"), list):
        document = [s for t in document["data"] if isinstance(t, dict) and isinstance(t.get("spans"), list)
                    for s in t["spans"]]
    outcome("jaeger", {"x.json": pretty(document) if pretty_printed else json.dumps(document)})


TIMES = st.sampled_from(["1700000000", "1700000000000", "1.7e18", "2023-11-14T22:13:20Z", "2300-01-01", "1800-01-01",
                         "NaN", "inf", "-1e300"])
CELLS = st.text(alphabet=st.sampled_from(list('0123456789.-:TZ ,;"\n\tabcé\x00')), max_size=12) | TIMES


@PROPERTY
@given(header=st.sampled_from(["timestamp,service,metric,value"] * 3 + ["ts,pod,cpu,mem", "a;b;c", ""])
       | st.text(max_size=20),
       rows=st.lists(st.tuples(TIMES | CELLS, st.sampled_from(["api", "cart-5f6d7c8b9-x1y2z"]) | CELLS,
                               st.just("cpu") | CELLS, st.sampled_from(["1", "0.5", "n/a"]) | CELLS).map(list)
                     | st.lists(CELLS, max_size=5), max_size=6),
       options=st.fixed_dictionaries({}, optional={
           "time_unit": st.sampled_from(["auto", "s", "ms", "us", "ns"]), "wide": st.booleans(),
           "delimiter": st.sampled_from([",", ";", "\t", "", ";;", "tab"]),
           "map": st.sampled_from([{"ts": "timestamp", "pod": "service"}, {"nope": "timestamp"}])}),
       encoding=st.sampled_from(["utf-8"] * 4 + ["latin-1", "utf-16", "ascii"]))
def test_random_csv(header: str, rows: list[list[str]], options: dict[str, Any], encoding: str) -> None:
    text = header + "\n" + "".join(",".join(row) + "\n" for row in rows)
    outcome("csv", {"m.csv": text.encode("utf-8", "surrogatepass")}, table=options, encoding=encoding)


@PROPERTY
@given(content=st.binary(max_size=200), name=st.sampled_from(["x.json", "x.jsonl.gz", "m.csv", "m.csv.gz"]),
       compress=st.booleans(), fmt=st.sampled_from(["otlp", "jaeger", "csv", "parquet"]))
def test_random_bytes(content: bytes, name: str, compress: bool, fmt: str) -> None:
    if compress and name.endswith(".gz"):
        content = gzip.compress(content)
    if fmt == "parquet":
        name = "x.parquet"
    elif (fmt == "csv") != name.startswith("m"):
        name = {"x.json": "m.csv", "x.jsonl.gz": "m.csv.gz", "m.csv": "x.json", "m.csv.gz": "x.jsonl.gz"}[name]
    outcome(fmt, {name: content})


def test_source_error_is_what_the_cli_catches() -> None:
    assert issubclass(SourceError, MeltError)
