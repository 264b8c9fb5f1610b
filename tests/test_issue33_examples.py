"""Issue 33's "Why" examples that the rest of the bad-input corpus did not hold yet.

The corpus (``test_bad_input.py``, ``test_import_bad_input.py``, ``test_delivery_bad_input.py``,
``test_spool.py``, ``test_config_properties.py``, ``test_delivery.py``) covers most of the issue's
examples; this file adds the rest, with the same promise: exit 2, one ``melt: error:`` line and no
traceback, or the documented fallback with nothing computed lost.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from melt.cli import cli
from melt.core.bundle import MeltBundle
from tests.conftest import MELT, REPO
from tests.test_bad_input import config_file, one_line_error
from tests.test_import_bad_input import (
    jaeger_span,
    jaeger_trace,
    lines,
    otlp_request,
    otlp_span,
    pretty,
    run_import,
    write_files,
)
from tests.test_importers import write_nezha_layout


# ---------------------------------------------------------------- "device: tpu" on every torch detector
@pytest.mark.parametrize("detector", ["gat_gae", "teg"])
def test_device_tpu_on_the_other_torch_detectors(tmp_path, detector) -> None:
    """``lstm_ae.device: tpu`` is in test_bad_input; the issue names no detector, so every one with a device."""
    config = config_file(tmp_path, f"detectors:\n  {detector}:\n    device: tpu\n")
    result = CliRunner().invoke(cli, ["--config", config, "detect", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert f"'detectors.{detector}.device' must be one of auto, cpu, cuda" in one_line_error(result)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- click usage errors: one line, every command
def _usage_cases(tmp_path: Path) -> dict[str, list[str]]:
    file = tmp_path / "a-file"
    file.write_text("x")
    (tmp_path / "m.csv").write_text("timestamp,service,metric,value\n1700000000,a,cpu,1\n")
    return {
        "detect --out FILE": ["detect", "--data", str(tmp_path), "--out", str(file)],
        "train --out FILE": ["train", "--data", str(tmp_path), "--out", str(file)],
        "import --out FILE": ["import", "csv", str(tmp_path / "m.csv"), "--out", str(file)],
        "deliver --spool FILE": ["deliver", "--spool", str(file)],
        "--config DIR detect": ["--config", str(tmp_path), "detect", "--data", str(tmp_path), "--out", str(tmp_path / "o")],
        "--config DIR import": ["--config", str(tmp_path), "import", "csv", str(tmp_path / "m.csv"), "--out",
                                str(tmp_path / "b")],
    }


@pytest.mark.parametrize("case", ["detect --out FILE", "train --out FILE", "import --out FILE", "deliver --spool FILE",
                                  "--config DIR detect", "--config DIR import"])
def test_out_that_is_a_file_and_config_that_is_a_directory_on_every_command(tmp_path, case) -> None:
    args = _usage_cases(tmp_path)[case]
    output = one_line_error(CliRunner().invoke(cli, args))
    assert "Usage:" not in output and "Try " not in output
    assert ("is a file" if "FILE" in case else "is a directory") in output
    assert (tmp_path / "a-file").read_text() == "x"


# ---------------------------------------------------------------- importers
OTLP_METRICS_EXAMPLE = {  # opentelemetry-proto examples/metrics.json (gauge, sum, histogram, exponential histogram)
    "resourceMetrics": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeMetrics": [{
            "scope": {"name": "my.library", "version": "1.0.0"},
            "metrics": [
                {"name": "my.counter", "unit": "1", "description": "I am a Counter", "sum": {
                    "aggregationTemporality": 1, "isMonotonic": True, "dataPoints": [{
                        "asDouble": 5, "startTimeUnixNano": "1544712660300000000", "timeUnixNano": "1544712660300000000",
                        "attributes": [{"key": "my.counter.attr", "value": {"stringValue": "some value"}}]}]}},
                {"name": "my.gauge", "unit": "1", "description": "I am a Gauge", "gauge": {"dataPoints": [{
                    "asDouble": 10, "timeUnixNano": "1544712660300000000",
                    "attributes": [{"key": "my.gauge.attr", "value": {"stringValue": "some value"}}]}]}},
                {"name": "my.histogram", "unit": "1", "description": "I am a Histogram", "histogram": {
                    "aggregationTemporality": 1, "dataPoints": [{
                        "startTimeUnixNano": "1544712660300000000", "timeUnixNano": "1544712660300000000", "count": 2,
                        "sum": 2, "bucketCounts": [1, 1], "explicitBounds": [1], "min": 0, "max": 2,
                        "attributes": [{"key": "my.histogram.attr", "value": {"stringValue": "some value"}}]}]}},
                {"name": "my.exponential.histogram", "unit": "1", "description": "I am an Exponential Histogram",
                 "exponentialHistogram": {"aggregationTemporality": 1, "dataPoints": [{
                     "startTimeUnixNano": "1544712660300000000", "timeUnixNano": "1544712660300000000", "count": 3,
                     "sum": 10, "scale": 0, "zeroCount": 1, "positive": {"offset": 1, "bucketCounts": [0, 2]},
                     "min": 0, "max": 5, "zeroThreshold": 0,
                     "attributes": [{"key": "my.exponential.histogram.attr", "value": {"stringValue": "some value"}}]}]}},
            ],
        }],
    }],
}


def test_the_official_otlp_metrics_example_pretty_printed(tmp_path) -> None:
    """The trace and logs examples are in test_import_bad_input; the metrics one failed the same way."""
    source = write_files(tmp_path / "src", {"metrics.json": pretty(OTLP_METRICS_EXAMPLE)})
    assert len(source.read_text().splitlines()) > 50
    summary = run_import("otlp", source, tmp_path / "b")
    assert summary.rows.get("metrics", 0) >= 4 and summary.bad_rows.count == 0, summary.lines()
    metrics = MeltBundle.read(tmp_path / "b").metrics
    assert set(metrics["service"]) == {"my.service"}
    assert {name.split("{")[0] for name in metrics["metric"]} == {"my.counter", "my.gauge", "my.histogram",
                                                                  "my.exponential.histogram"}


def _jaeger_without_service() -> str:
    trace = jaeger_trace(jaeger_span("a1"), jaeger_span("a2"))
    trace["processes"]["p1"]["serviceName"] = ""
    return json.dumps({"data": [trace]})


IMPORT_CLI_CASES = {
    "jaeger nested 200000 deep": ("jaeger", {"deep.json": '{"data": ' + "[" * 200_000}, [],
                                  r"deep.json:1: JSON nested too deeply"),
    "jaeger jsonl nested 200000 deep": ("jaeger", {"deep.jsonl": "[" * 200_000 + "\n"}, [],
                                        r"deep.jsonl:1: JSON nested too deeply"),
    "jaeger .jsonl.gz not gzip": ("jaeger", {"t.jsonl.gz": "{}\n"}, [], "t.jsonl.gz: not a gzip file"),
    "jaeger empty service names": ("jaeger", {"t.json": _jaeger_without_service()}, [],
                                   "column 'service_name' is empty"),
    "csv metrics all NaN": ("csv", {"m.csv": "timestamp,service,metric,value\n1700000000,a,cpu,nan\n"
                                              "1700000060,a,cpu,NaN\n"}, [], "column 'value' holds no number at all"),
}


@pytest.mark.parametrize("case", IMPORT_CLI_CASES.values(), ids=IMPORT_CLI_CASES.keys())
def test_import_cli_bad_input_is_one_line(tmp_path, case) -> None:
    fmt, files, options, message = case
    source = write_files(tmp_path / "src", files)
    result = CliRunner().invoke(cli, ["import", fmt, str(source), "--out", str(tmp_path / "b"), "--quiet", *options])
    assert message in one_line_error(result)


EMPTY_SERVICE_IMPORTS = {
    "csv empty service": ("csv", {"m.csv": "timestamp,service,metric,value\n1700000000,,cpu,1\n1700000060,a,cpu,1\n"},
                          "m.csv:2: column 'service' is null"),
    "csv blank service": ("csv", {"m.csv": "timestamp,service,metric,value\n1700000000, ,cpu,1\n1700000060,a,cpu,1\n"},
                          "m.csv:2: column 'service' is empty"),
    "otlp empty service.name": ("otlp", {"t.jsonl": lines(otlp_request(otlp_span("01"), service=""),
                                                          otlp_request(otlp_span("02")))},
                                "t.jsonl:1: column 'service_name' is empty"),
}


@pytest.mark.parametrize("case", EMPTY_SERVICE_IMPORTS.values(), ids=EMPTY_SERVICE_IMPORTS.keys())
def test_an_empty_service_name_is_a_counted_bad_row(tmp_path, case) -> None:
    fmt, files, example = case
    summary = run_import(fmt, write_files(tmp_path / "src", files), tmp_path / "b")
    assert sum(summary.rows.values()) == 1 and summary.bad_rows.count == 1, summary.lines()
    assert any(example in e for e in summary.bad_rows.examples), summary.bad_rows.examples
    bundle = MeltBundle.read(tmp_path / "b")
    frame = bundle.metrics if fmt == "csv" else bundle.traces
    column = "service" if fmt == "csv" else "service_name"
    assert (frame[column].str.strip() != "").all()


NEZHA_FAULT_LISTS = {
    "a JSON list": [{"inject_time": "2023-01-29 08:42:30", "inject_pod": "ts-contacts-service-866bd68c97-xcqfx",
                     "inject_type": "exception"}],
    "a JSON number": 42,
    "JSON null": None,
}


@pytest.mark.parametrize("content", NEZHA_FAULT_LISTS.values(), ids=NEZHA_FAULT_LISTS.keys())
def test_a_nezha_fault_list_that_is_not_a_mapping_is_one_line(tmp_path, content) -> None:
    root = write_nezha_layout(tmp_path / "nezha")
    (root / "rca_data" / "2023-01-29" / "2023-01-29-fault_list.json").write_text(json.dumps(content))
    result = CliRunner().invoke(cli, ["import", "nezha", str(root), "--out", str(tmp_path / "b"), "--quiet"])
    assert "fault_list.json" in one_line_error(result)
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


# ---------------------------------------------------------------- the bundle: empty service names in every frame
def test_an_empty_service_name_in_traces_and_logs_is_one_line(tmp_path, tiny_bundle) -> None:
    """test_bad_input has a blank metrics service; the other frames and the empty string."""
    cases = {
        "traces": (tiny_bundle.traces.head(50).reset_index(drop=True), "service_name"),
        "logs": (tiny_bundle.logs.head(50).reset_index(drop=True), "service"),
        "metrics": (tiny_bundle.metrics.drop(columns=["label", "peer"], errors="ignore").head(50).reset_index(drop=True),
                    "service"),
    }
    for name, (frame, column) in cases.items():
        root = tmp_path / name
        root.mkdir()
        frame.assign(**{column: frame[column].where(frame.index != 3, "")}).to_parquet(root / f"{name}.parquet",
                                                                                        index=False)
        result = CliRunner().invoke(cli, ["detect", "--data", str(root), "--models", "all", "--out", str(tmp_path / "o")])
        assert f"{name}: column '{column}' is empty" in one_line_error(result)
        assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- gat_gae and teg no longer fit silently
def _run_in_a_terminal(args: list[str], timeout: float = 120.0) -> tuple[int, str]:
    """Run melt with stderr on a pseudo-terminal of 120 columns (a bare pty has 0, and tqdm draws nothing)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen([*MELT, *args], stdout=subprocess.DEVNULL, stderr=slave, cwd=REPO)
    os.close(slave)
    output, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        return process.wait(timeout=max(1.0, deadline - time.monotonic())), output.decode(errors="replace")
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()


def test_gat_gae_and_teg_fits_show_progress_in_a_terminal(tiny_dir, tmp_path) -> None:
    config = config_file(tmp_path, "detectors:\n  gat_gae:\n    epochs: 1\n  teg:\n    epochs: 1\n")
    code, output = _run_in_a_terminal(["--config", config, "detect", "--data", str(tiny_dir), "--models",
                                       "zscore,gat_gae,teg", "--out", str(tmp_path / "o")])
    assert code == 0, output
    assert "Traceback" not in output
    assert "[melt] fitting:" in output and "/3 [" in output  # the tqdm bar over the fits
    assert "[melt] fitted gat_gae on" in output and "[melt] fitted teg on" in output
    assert "[melt] scoring:" in output
    assert list((tmp_path / "o").glob("INC-*.json"))


def test_no_bar_off_the_terminal(tiny_dir, tmp_path) -> None:
    config = config_file(tmp_path, "detectors:\n  teg:\n    epochs: 1\n")
    done = subprocess.run([*MELT, "--config", config, "detect", "--data", str(tiny_dir), "--models", "zscore,teg",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "it/s" not in done.stderr
    assert "[melt] fitted teg on" in done.stderr
