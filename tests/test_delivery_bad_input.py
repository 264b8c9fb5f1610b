"""Bad input for delivery (issue 33): garbage servers, bad URLs, payload errors, corrupt spool entries
and sink orders, over `melt deliver` and the webhook sink of `melt detect`.

Every case checks the exit code, exactly the documented stderr lines (one per kind of failure, no
traceback) and that nothing computed was lost: report files exist, undelivered reports are in the
spool with their reason, corrupt entries are in `failed/` byte for byte, and nothing is left claimed.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import socketserver
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from melt.cli import cli
from melt.delivery.spool import spool_report
from tests.conftest import REPO
from tests.local_servers import WebhookReceiver

MODELS = "zscore,span_latency"
UNSET = "MELT_BAD_INPUT_NEVER_SET"
DROP = object()  # an entry field to remove
HTML = b"<html><body><h1>Thanks!</h1></body></html>"


# ---------------------------------------------------------------- servers


class RawServer:
    """A TCP server on 127.0.0.1 that reads one HTTP request per connection and answers ``answer``
    as raw bytes (``None``: hang up without a word), after ``delay`` seconds."""

    def __init__(self, answer: bytes | None, delay: float = 0.0) -> None:
        self.requests = 0
        self.stop = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                while length and len(body) < int(length.group(1)):
                    chunk = self.request.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                outer.requests += 1
                if delay and outer.stop.wait(delay):
                    return
                if answer is not None:
                    try:
                        self.request.sendall(answer)
                    except OSError:
                        pass

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> RawServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


class Refused:
    """A URL where nothing listens: connection refused."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"

    def __enter__(self) -> Refused:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def server(kind: str) -> Any:
    """A local endpoint that behaves as ``kind``."""
    if kind == "ok":
        return WebhookReceiver()
    if kind in ("500", "404"):
        receiver = WebhookReceiver(status=int(kind))
        receiver.down = True
        return receiver
    if kind == "garbage":
        return RawServer(b"garbage\r\n\r\n")
    if kind == "hangup":
        return RawServer(None)
    if kind == "bad-status":
        return RawServer(b"HTTP/1.1 abc Fine\r\nContent-Length: 0\r\n\r\n")
    if kind == "html-200":
        return RawServer(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (len(HTML), HTML))
    if kind == "hang":
        return RawServer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", delay=5.0)
    if kind == "refused":
        return Refused()
    raise ValueError(kind)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def report(tiny_report) -> dict:
    """One real, valid report from the tiny bundle (a copy each module may change)."""
    return copy.deepcopy(tiny_report)


@pytest.fixture(autouse=True)
def no_unset_variable(monkeypatch) -> None:
    monkeypatch.delenv(UNSET, raising=False)


def write_config(path: Path, webhook: dict[str, Any], **report: Any) -> str:
    values = {"max_retries": 0, "backoff": 0.0, "timeout": 0.5, **webhook}
    path.write_text(yaml.safe_dump({"report": {**report, "webhook": values}}))
    return str(path)


def templates(tmp_path: Path) -> dict[str, str]:
    """Payload files: one with an unknown placeholder, one that is not JSON, one that does not exist."""
    (tmp_path / "unknown.json").write_text(json.dumps({"title": "${service}", "oops": "${no_such_value}"}))
    (tmp_path / "not-json.json").write_text("{title: ${service}")
    return {"unknown": str(tmp_path / "unknown.json"), "not-json": str(tmp_path / "not-json.json"),
            "missing": str(tmp_path / "missing.json")}


def snapshot(spool: Path) -> dict[str, bytes]:
    return {str(p.relative_to(spool)): p.read_bytes() for p in sorted(spool.rglob("*")) if p.is_file()}


def no_traceback(*texts: str) -> None:
    assert not any("Traceback" in t for t in texts), texts


def stderr_lines(result: Any) -> list[str]:
    return result.stderr.splitlines()


# ---------------------------------------------------------------- melt deliver


@dataclass
class Entry:
    """One spool entry: a real report's entry with ``changes`` (``DROP`` removes a field), or ``raw`` bytes."""

    changes: dict[str, Any] = field(default_factory=dict)
    report_changes: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None
    name: str | None = None


@dataclass
class DeliverCase:
    server: str
    entries: list[Entry]
    outcomes: list[str]  # per entry: "sent", "spool" (back, with its reason) or "failed" (moved to failed/)
    code: int
    stderr: list[str]  # regexes, one per line, in order; {spool} and {name0} are filled in
    args: list[str] = field(default_factory=list)
    webhook: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # what last_error must contain for "spool" entries


UNDELIVERED = r"melt: error: {n} report\(s\) still undelivered \({name0}: .*{why}.*\); they stay in {spool}"
CORRUPT = r"melt: {level}: 1 corrupt spool entry moved to {spool}/failed, never to be sent \({name}: .*{why}.*\)"
BAD_URL = r"melt: error: --url: .* is not an http:// or https:// URL"


def undelivered(why: str, n: int = 1) -> str:
    return UNDELIVERED.replace("{n}", str(n)).replace("{why}", why)


def corrupt(why: str, name: str = "corrupt.json", level: str = "error") -> str:
    return CORRUPT.replace("{level}", level).replace("{why}", why).replace("{name}", re.escape(name))


def spool_fails(server_kind: str, why: str, entry: Entry | None = None, **extra: Any) -> DeliverCase:
    return DeliverCase(server_kind, [entry or Entry()], ["spool"], 2, [undelivered(re.escape(why))], reason=why, **extra)


def set_aside(entry: Entry, why: str) -> DeliverCase:
    name = "corrupt.json" if entry.raw is not None else f"{0:020x}.json"  # see _build_spool
    return DeliverCase("ok", [entry], ["failed"], 2, [corrupt(re.escape(why), name)])


def bad_url(url: str) -> DeliverCase:
    return DeliverCase("ok", [Entry()], ["unchanged"], 2, [BAD_URL], args=["--url", url])


DELIVER_CASES = {
    # garbage servers
    "non-HTTP answer": spool_fails("garbage", "no valid HTTP answer"),
    "hang-up without an answer": spool_fails("hangup", "no valid HTTP answer"),
    "invalid status line": spool_fails("bad-status", "no valid HTTP answer"),
    "HTTP 500 forever, retries exhausted": spool_fails("500", "HTTP 500", webhook={"max_retries": 2}),
    "HTTP 404 is final": spool_fails("404", "HTTP 404"),
    "connection refused": spool_fails("refused", "cannot reach"),
    "server hangs past the timeout": spool_fails("hang", "timed out"),
    "200 with an HTML body is delivered": DeliverCase("html-200", [Entry()], ["sent"], 0, []),
    # bad URLs
    "--url not-a-url": bad_url("not-a-url"),
    "--url ftp://x": bad_url("ftp://x"),
    "--url without a host": bad_url("http://"),
    "--url with a bad port": bad_url("http://127.0.0.1:port/"),
    "--url empty": bad_url(""),
    "entry url not a URL": spool_fails("ok", "'not-a-url' is not an http:// or https:// URL",
                                       Entry({"url": "not-a-url"})),
    "entry url ftp": spool_fails("ok", "'ftp://x' is not an http:// or https:// URL", Entry({"url": "ftp://x"})),
    "entry url a number": spool_fails("ok", "42 is not an http:// or https:// URL", Entry({"url": 42})),
    "entry without url and none configured": spool_fails("ok", "needs report.webhook.url", Entry({"url": DROP})),
    "--url rescues an entry with a bad url": DeliverCase("ok", [Entry({"url": "not-a-url"})], ["sent"], 0, [],
                                                         args=["--url", "{server}"]),
    "entry without a fingerprint is delivered": DeliverCase("ok", [Entry({"fingerprint": DROP})], ["sent"], 0, []),
    "entry without a fingerprint goes back": spool_fails("500", "HTTP 500", Entry({"fingerprint": DROP})),
    "entry with nonsense attempts goes back": spool_fails("500", "HTTP 500", Entry({"attempts": "many"})),
    # payload errors
    "jira without its vars": spool_fails("ok", "unknown placeholder ${jira_project}", Entry({"payload": "jira"})),
    "unset ${env:X} header": spool_fails("ok", f"environment variable {UNSET} is not set",
                                         webhook={"headers": {"Authorization": f"Bearer ${{env:{UNSET}}}"}}),
    "unset ${env:X} var": spool_fails("ok", f"environment variable {UNSET} is not set", Entry({"payload": "pagerduty"}),
                                      webhook={"vars": {"pagerduty_routing_key": f"${{env:{UNSET}}}"}}),
    "unknown placeholder in a payload file": spool_fails("ok", "unknown placeholder ${no_such_value}",
                                                         Entry({"payload": "{unknown}"})),
    "payload file that does not exist": spool_fails("ok", "is neither generic, jira, pagerduty nor a file",
                                                    Entry({"payload": "{missing}"})),
    "payload file that is not JSON": spool_fails("ok", "is not valid JSON", Entry({"payload": "{not-json}"})),
    # corrupt entries
    "not JSON": set_aside(Entry(raw=b"{not json"), "not JSON"),
    "empty file": set_aside(Entry(raw=b""), "not JSON"),
    "not UTF-8": set_aside(Entry(raw=b"\xff\xfe\x00garbage"), "not UTF-8"),
    "a JSON list": set_aside(Entry(raw=b"[1, 2, 3]"), "a JSON list, not an object"),
    "no report": set_aside(Entry({"report": DROP}), "no report in the entry"),
    "report not an object": set_aside(Entry({"report": "INC-1"}), "no report in the entry"),
    "report fails validation": set_aside(Entry(report_changes={"evidence": DROP}), "invalid"),
    "report with a bad fingerprint": set_aside(Entry(report_changes={"fingerprint": "XYZ"}), "invalid"),
    # mixtures: one line per kind of failure
    "corrupt beside a good entry": DeliverCase("ok", [Entry(raw=b"{"), Entry()], ["failed", "sent"], 2,
                                               [corrupt("not JSON")]),
    "corrupt beside an undelivered entry": DeliverCase("500", [Entry(raw=b"[]"), Entry()], ["failed", "spool"], 2,
                                                       [corrupt("JSON list", level="warning"),
                                                        undelivered("HTTP 500")], reason="HTTP 500"),
    "two undelivered, two reasons": DeliverCase("ok", [Entry({"url": "ftp://x"}), Entry({"payload": "jira"})],
                                                ["spool", "spool"], 2, [undelivered("", n=2)]),
}


def _build_spool(spool: Path, case: DeliverCase, report: dict, url: str, files: dict[str, str]) -> list[str]:
    """Write the case's entries; their names, in order."""
    names = []
    for number, item in enumerate(case.entries):
        this = {**report, "incident_id": f"INC-BAD-{number}", "fingerprint": f"{number:020x}"}
        name = item.name or (f"{this['fingerprint']}.json" if item.raw is None else "corrupt.json")
        if item.raw is not None:
            spool.mkdir(parents=True, exist_ok=True)
            (spool / name).write_bytes(item.raw)
        else:
            path = spool_report(spool, this, url, "generic", "HTTP 503", 1)
            entry = json.loads(path.read_text())
            for key, value in item.report_changes.items():
                entry["report"].pop(key) if value is DROP else entry["report"].__setitem__(key, value)
            for key, value in item.changes.items():
                value = value.format(**files) if isinstance(value, str) else value
                entry.pop(key) if value is DROP else entry.__setitem__(key, value)
            path.write_text(json.dumps(entry))
        names.append(name)
    return names


@pytest.mark.parametrize("case", DELIVER_CASES.values(), ids=DELIVER_CASES.keys())
def test_deliver_bad_input(case: DeliverCase, report, tmp_path) -> None:
    spool, files = tmp_path / "spool", templates(tmp_path)
    with server(case.server) as endpoint:
        names = _build_spool(spool, case, report, endpoint.url, files)
        before = snapshot(spool)
        config = write_config(tmp_path / "melt.yaml", case.webhook)
        args = [a.replace("{server}", endpoint.url) for a in case.args]
        result = CliRunner().invoke(cli, ["--config", config, "deliver", "--spool", str(spool), *args])
    no_traceback(result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == case.code, result.output
    lines = stderr_lines(result)
    assert len(lines) == len(case.stderr), lines
    for line, pattern in zip(lines, case.stderr, strict=True):
        assert re.fullmatch(pattern.replace("{spool}", re.escape(str(spool))).replace("{name0}", r"\S+"), line), line
    if case.outcomes == ["unchanged"]:
        assert snapshot(spool) == before
        return
    left = snapshot(spool)
    assert not [n for n in left if ".sending" in n or n.endswith(".tmp")], left  # nothing stuck as a claim
    for name, outcome in zip(names, case.outcomes, strict=True):
        if outcome == "sent":
            assert name not in left and f"failed/{name}" not in left
            assert f"{name}" not in result.stdout
        elif outcome == "failed":
            assert left.get(f"failed/{name}") == before[name] and name not in left
            assert f"set aside: {name} (" in result.stdout
        else:
            entry = json.loads(left[name])
            assert entry["last_error"] and (case.reason is None or case.reason in entry["last_error"])
            assert entry["report"] == json.loads(before[name])["report"] and entry["fingerprint"]
            assert f"not delivered: {name} (" in result.stdout
    assert ("delivered 1 report(s)" in result.stdout) == ("sent" in case.outcomes)


@pytest.mark.parametrize("kind,args,code,pattern", [
    ("garbage", [], 2, undelivered("no valid HTTP answer")),
    ("ok", ["--url", "not-a-url"], 2, BAD_URL),
    ("ok", [], 0, None),
], ids=["garbage answer", "--url not-a-url", "delivered"])
def test_deliver_as_a_real_process(kind: str, args: list[str], code: int, pattern: str | None, report, tmp_path) -> None:
    spool = tmp_path / "spool"
    with server(kind) as endpoint:
        spool_report(spool, report, endpoint.url, "generic", "HTTP 503", 1)
        before = snapshot(spool)
        config = write_config(tmp_path / "melt.yaml", {})
        done = subprocess.run([sys.executable, "-m", "melt.cli", "--config", config, "deliver", "--spool", str(spool),
                               *args], capture_output=True, text=True, cwd=REPO, timeout=60)
    no_traceback(done.stdout, done.stderr)
    assert done.returncode == code, done.stderr
    lines = done.stderr.splitlines()
    if pattern is None:
        assert lines == [] and snapshot(spool) == {}
    else:
        assert len(lines) == 1 and re.fullmatch(pattern.replace("{spool}", re.escape(str(spool))).replace(
            "{name0}", r"\S+"), lines[0]), lines
        assert list(snapshot(spool)) == list(before)


def test_deliver_without_a_spool_is_one_line(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["deliver", "--spool", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and stderr_lines(result) == [f"melt: error: {tmp_path / 'nowhere'}: spool directory not found"]
    assert not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------- the webhook sink inside melt detect


DETECT_FAILURES = {
    "jira without its vars": ("ok", {"payload": "jira"}, "unknown placeholder ${jira_project}"),
    "unset ${env:X} header": ("ok", {"headers": {"Authorization": f"Bearer ${{env:{UNSET}}}"}},
                              f"environment variable {UNSET} is not set"),
    "unknown placeholder": ("ok", {"payload": "{unknown}"}, "unknown placeholder ${no_such_value}"),
    "non-HTTP answer": ("garbage", {}, "no valid HTTP answer"),
    "HTTP 500 forever": ("500", {"max_retries": 1}, "HTTP 500"),
    "connection refused": ("refused", {}, "cannot reach"),
}
ORDERS = {"webhook,files": ["webhook", "files"], "files,webhook": ["files", "webhook"]}


def _detect(tiny_dir: Path, tmp_path: Path, server_kind: str, webhook: dict[str, Any], sinks: list[str]) -> Any:
    files = templates(tmp_path)
    webhook = {k: v.format(**files) if isinstance(v, str) else v for k, v in webhook.items()}
    out, spool = tmp_path / "out", tmp_path / "spool"
    with server(server_kind) as endpoint:
        config = write_config(tmp_path / "melt.yaml", {"url": endpoint.url, **webhook}, sinks=sinks,
                              spool_dir=str(spool))
        result = CliRunner().invoke(cli, ["--config", config, "detect", "--data", str(tiny_dir), "--models", MODELS,
                                          "--out", str(out), "--quiet"])
    return result, out, spool


@pytest.mark.parametrize("order", ORDERS.values(), ids=ORDERS.keys())
@pytest.mark.parametrize("failure", DETECT_FAILURES.values(), ids=DETECT_FAILURES.keys())
def test_detect_keeps_every_report_whatever_the_sink_order(failure, order, tiny_dir, tmp_path) -> None:
    server_kind, webhook, why = failure
    result, out, spool = _detect(tiny_dir, tmp_path, server_kind, webhook, order)
    no_traceback(result.output)
    assert result.exit_code == 2, result.output
    written = sorted(json.loads(p.read_text())["incident_id"] for p in out.glob("INC-*.json"))
    assert written and (out / "index.json").is_file()
    entries = [json.loads(p.read_text()) for p in spool.glob("*.json")]
    assert sorted(e["incident_id"] for e in entries) == written
    assert all(why in e["last_error"] for e in entries), [e["last_error"] for e in entries]
    assert not [p for p in spool.iterdir() if not p.name.endswith(".json")]
    n = len(written)
    line = (rf"melt: error: webhook: {n} of {n} report\(s\) not delivered \(.*{re.escape(why)}.*\); "
            rf"kept in {re.escape(str(spool))}, resend with 'melt deliver --spool {re.escape(str(spool))}'")
    assert len(stderr_lines(result)) == 1 and re.fullmatch(line, stderr_lines(result)[0]), result.stderr


def test_detect_with_webhook_and_stdout_only_spools_every_report(tiny_dir, tmp_path) -> None:
    result, out, spool = _detect(tiny_dir, tmp_path, "garbage", {}, ["stdout", "webhook"])
    no_traceback(result.output)
    assert result.exit_code == 2 and len(stderr_lines(result)) == 1 and "not delivered" in result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    spooled = [json.loads(p.read_text())["report"] for p in spool.glob("*.json")]
    assert printed and printed == spooled and not list(out.glob("INC-*.json"))


DETECT_CONFIG_ERRORS = {
    "payload file that does not exist": ({"payload": "{missing}"}, "is neither generic, jira, pagerduty nor a file"),
    "payload file that is not JSON": ({"payload": "{not-json}"}, "is not valid JSON"),
    "url ftp://x": ({"url": "ftp://x"}, "report.webhook.url: 'ftp://x' is not an http:// or https:// URL"),
    "url not a URL": ({"url": "not-a-url"}, "report.webhook.url: 'not-a-url' is not an http:// or https:// URL"),
}


@pytest.mark.parametrize("webhook,why", DETECT_CONFIG_ERRORS.values(), ids=DETECT_CONFIG_ERRORS.keys())
def test_detect_stops_before_any_detector_on_a_bad_webhook_setting(webhook, why, tiny_dir, tmp_path) -> None:
    """Nothing is computed, so nothing is lost: one line, exit 2, no reports and no spool."""
    result, out, spool = _detect(tiny_dir, tmp_path, "ok", webhook, ["webhook", "files"])
    no_traceback(result.output)
    assert result.exit_code == 2
    assert len(stderr_lines(result)) == 1 and why in result.stderr and result.stderr.startswith("melt: error: ")
    assert not out.exists() and not spool.exists()


def test_a_report_spooled_for_a_payload_error_is_delivered_once_the_config_is_fixed(tiny_dir, tmp_path) -> None:
    result, out, spool = _detect(tiny_dir, tmp_path, "ok", {"payload": "jira"}, ["webhook", "files"])
    assert result.exit_code == 2 and list(spool.glob("*.json"))
    with WebhookReceiver() as receiver:
        config = write_config(tmp_path / "fixed.yaml", {"vars": {"jira_project": "OPS"}})
        fixed = CliRunner().invoke(cli, ["--config", config, "deliver", "--spool", str(spool), "--url", receiver.url])
    assert fixed.exit_code == 0 and fixed.stderr == "" and not list(spool.iterdir())
    assert [r["body"]["fields"]["project"]["key"] for r in receiver.requests] == ["OPS"] * len(list(out.glob("INC-*.json")))
