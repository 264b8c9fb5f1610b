"""`melt serve` refuses bad input before it serves: one line `melt: error: ...` and exit 2, like
every command (a missing or corrupt model directory, a port in use, an unwritable data directory,
a bad setting)."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from melt.cli import cli


def _models(tmp_path, index: str | None = '{"detectors": ["zscore"]}'):
    root = tmp_path / "models"
    root.mkdir()
    if index is not None:
        (root / "models.json").write_text(index)
    return root


def _serve(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["serve", *args])
    return result.exit_code, result.output


def _one_line(code: int, output: str) -> str:
    assert code == 2, output
    assert output.startswith("melt: error: ") and output.count("\n") == 1 and "Traceback" not in output, output
    return output


@pytest.mark.parametrize("index, message", [
    (None, "not a model directory (no models.json"),
    ("{not json", "not a melt model index"),
    ('{"detectors": ["zscore"]}', "zscore: not a saved detector"),  # listed, but nothing saved
])
def test_a_missing_or_corrupt_model_directory(tmp_path, index, message) -> None:
    models = _models(tmp_path, index)
    out = _one_line(*_serve("--model", str(models), "--port", "0", "--data-dir", str(tmp_path / "data")))
    assert message in out


def test_a_model_directory_that_does_not_exist(tmp_path) -> None:
    out = _one_line(*_serve("--model", str(tmp_path / "nope"), "--port", "0", "--data-dir", str(tmp_path / "d")))
    assert "not a model directory" in out


def test_a_port_in_use(tmp_path) -> None:
    models = _models(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _one_line(*_serve("--model", str(models), "--host", "127.0.0.1", "--port", str(port),
                                "--data-dir", str(tmp_path / "data")))
    assert f"cannot listen on 127.0.0.1:{port}" in out and "in use" in out


def test_an_unwritable_data_directory(tmp_path) -> None:
    models = _models(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = _one_line(*_serve("--model", str(models), "--port", "0", "--data-dir", str(blocker / "data")))
    assert f"serve.data_dir: cannot write to {blocker / 'data'}" in out


def test_bad_settings_from_flags_and_from_the_config_file(tmp_path) -> None:
    models = _models(tmp_path)
    out = _one_line(*_serve("--model", str(models), "--port", "70000"))
    assert "serve.port" in out and "65535" in out
    config = tmp_path / "config.yaml"
    config.write_text("serve:\n  step: 0s\n")
    out = _one_line(*_serve("--model", str(models), "--config", str(config)))
    assert "serve.step" in out
    out = _one_line(*_serve("--model", str(models), "--host", "no-such-host.invalid", "--port", "0",
                            "--data-dir", str(tmp_path / "data")))
    assert "serve.host: cannot resolve 'no-such-host.invalid'" in out


def test_serve_is_listed_with_its_options() -> None:
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--config", "--host", "--port", "--data-dir"):
        assert option in result.output
    assert "OTLP/HTTP" in result.output


RUN_WITH_A_FAKE_RUNNER = """
import sys
sys.path.insert(0, {tests!r})
import melt.serve.app as app_module
from melt.serve.segments import SegmentStore
from melt.serve.state import StateDB
from test_serve_api import FakeRunner

def fake_assemble(settings, model_dir, metrics, state=None, store=None, **_):
    '''The real store and database; a fake step runner that says when it is stopped.'''
    state = state or StateDB(settings.serve.db, settings.serve.sinks)
    store = store or SegmentStore(settings.serve.data_dir, retention=settings.serve.retention,
                                  commit_interval=settings.serve.commit_interval, max_pending_bytes=2**20)
    runner = FakeRunner(state, [])
    stop = runner.stop
    runner.stop = lambda: (stop(), print("runner stopped", flush=True))
    return runner, store, state

app_module.assemble = fake_assemble
from melt.cli.app import main
sys.argv = ["melt", "serve", "--model", {models!r}, "--port", "0", "--data-dir", {data!r}]
main()
"""


@pytest.mark.parametrize("stop_signal", ["SIGTERM", "SIGINT"])
def test_sigterm_and_ctrl_c_stop_cleanly_with_acknowledged_data_on_disk(tmp_path, stop_signal) -> None:
    import re
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    models, data = _models(tmp_path), tmp_path / "data"
    script = RUN_WITH_A_FAKE_RUNNER.format(tests=str(Path(__file__).parent), models=str(models), data=str(data))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, line + process.stderr.read()
        url = match.group(1)
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        logs = {"resourceLogs": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "a"}}]},
                                  "scopeLogs": [{"logRecords": [{"timeUnixNano": str(time.time_ns()),
                                                                 "body": {"stringValue": "hello"}}]}]}]}
        assert httpx.post(f"{url}/v1/logs", json=logs).status_code == 200
        process.send_signal(getattr(signal, stop_signal))
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert stdout == "runner stopped\n"
    assert "stopped; state and segments are on disk" in stderr and "Traceback" not in stderr
    assert list((data / "segments" / "logs").glob("*.parquet"))  # acknowledged, so on disk
    assert (data / "serve.db").is_file()
