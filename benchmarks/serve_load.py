"""Sustained load on `melt serve`: spans and logs per second, step lag, data dropped, memory.

The server runs as `melt serve` (a child process, the real CLI) with models fitted on a generated
bundle. The sender replays that bundle's spans and logs as OTLP/HTTP protobuf requests (512 items
each, as the SDKs' batch processors send them), over and over, with fresh trace ids each pass.
The bundle's event time is compressed so that its spans arrive at ``--spans`` per second with
event times that follow the wall clock (durations kept), and ``--threads`` senders per signal
post concurrently, as a collector's sending queue does (its default is 10 consumers sending
batches of up to 8,192 items; 16 posters of 512 items is the same load in smaller pieces, and
with the receiver's group commit a request waits about a commit interval for its answer, so 8
posters cap a sender at about 13,000 items a second). It honours 429 with ``Retry-After``. Every
5 s it reads the server's ``/metrics`` (received rows, step lag, queue depth) and the RSS and CPU
time of the server's process tree (the receiver and its step process) from ``/proc``.

Reported: the rates sent and acknowledged, rows the server counted against rows acknowledged
(data dropped), the step lag (``melt_step_lag_seconds``: event time due for scoring and not yet
scored) and the position's age on the wall clock (between ``serve.lateness`` and ``serve.step +
serve.lateness`` plus a step's scoring time while scoring keeps up) over the run, the mean and
the peak RSS of each whole minute (the issue's flat memory: the last minute within 10% of the
second; a step's peak comes and goes within a minute, so both are reported), and the CPU share of
the receiver and of the whole tree. The baseline in the same run is the sender alone against a server that only
acknowledges (``--baseline``: a bare HTTP server that reads each body and answers 200), which
bounds what the sender and the machine can push.

    .venv/bin/python benchmarks/serve_load.py --spans 20000 --minutes 10
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
MODELS = "zscore,span_latency,call_edges,log_templates"


def template(services: int, minutes: int, rpm: float, seed: int, logs_per_minute: float) -> tuple[list, list, object]:
    """A generated bundle's spans and logs as parsed OTLP messages (one per 512 items), and the bundle."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from melt.core.settings import SynthSettings
    from melt.serve.replay import otlp_requests
    from synth.generate import generate

    bundle = generate(SynthSettings.of(services=services, duration=f"{minutes}m", requests_per_minute=rpm, seed=seed,
                                       background_logs_per_minute=logs_per_minute,
                                       faults=1, fault_types=["latency"], fault_duration="3m", warmup_fraction=0.5))
    spans, logs = [], []
    for request in otlp_requests(bundle):
        if request.path == "/v1/traces":
            spans.append(ExportTraceServiceRequest.FromString(request.body))
        elif request.path == "/v1/logs":
            logs.append(ExportLogsServiceRequest.FromString(request.body))
    return spans, logs, bundle


def shifted(message: object, kind: str, base: int, first: int, factor: float, salt: bytes) -> tuple[bytes, int]:
    """The message with each time t moved to ``base + (t - first) * factor`` (a span's duration
    kept) and trace ids made new; its body and item count."""
    copy = type(message)()
    copy.CopyFrom(message)
    items = 0
    if kind == "traces":
        for block in copy.resource_spans:
            for scope in block.scope_spans:
                for span in scope.spans:
                    duration = span.end_time_unix_nano - span.start_time_unix_nano
                    span.start_time_unix_nano = base + int((span.start_time_unix_nano - first) * factor)
                    span.end_time_unix_nano = span.start_time_unix_nano + duration
                    span.trace_id = salt + span.trace_id[len(salt):]
                    items += 1
    else:
        for block in copy.resource_logs:
            for scope in block.scope_logs:
                for record in scope.log_records:
                    record.time_unix_nano = base + int((record.time_unix_nano - first) * factor)
                    record.observed_time_unix_nano = record.time_unix_nano
                    if record.trace_id:
                        record.trace_id = salt + record.trace_id[len(salt):]
                    items += 1
    return copy.SerializeToString(), items


class Sender:
    """Paced OTLP/HTTP sender of one signal: ``threads`` posters share one paced stream of requests
    made from pre-parsed messages, their event times compressed by ``factor`` onto the wall clock."""

    def __init__(self, url: str, kind: str, messages: list, rate: float, first_ns: int, span_ns: int,
                 factor: float, threads: int) -> None:
        self.url, self.kind, self.messages, self.rate = url, kind, messages, rate
        self.first_ns, self.span_ns, self.factor, self.threads = first_ns, span_ns, factor, threads
        self.acked = self.throttled = self.failed = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._next = 0  # index of the next message over all passes
        self._items = 0  # items handed out so far, for the pacing
        self._began = time.monotonic()
        self._base = time.time_ns()

    def _take(self) -> tuple[bytes, int] | None:
        with self._lock:
            index, self._next = self._next, self._next + 1
            loop, position = divmod(index, len(self.messages))
            due = self._items / self.rate - (time.monotonic() - self._began)
            message = self.messages[position]
            base = self._base + int(loop * self.span_ns * self.factor)
            body, items = shifted(message, self.kind, base, self.first_ns, self.factor,
                                  random.Random(loop).randbytes(4))
            self._items += items
        if due > 0:
            time.sleep(due)
        return None if self.stop.is_set() else (body, items)

    def run(self) -> None:
        posters = [threading.Thread(target=self._post, daemon=True) for _ in range(self.threads)]
        for poster in posters:
            poster.start()
        for poster in posters:
            poster.join()

    def _post(self) -> None:
        path = "/v1/traces" if self.kind == "traces" else "/v1/logs"
        while not self.stop.is_set():
            taken = self._take()
            if taken is None:
                return
            body, items = taken
            while not self.stop.is_set():
                try:
                    request = urllib.request.Request(self.url + path, data=body, method="POST",
                                                     headers={"Content-Type": "application/x-protobuf"})
                    with urllib.request.urlopen(request, timeout=60):
                        with self._lock:
                            self.acked += items
                    break
                except urllib.error.HTTPError as exc:
                    if exc.code not in (429, 503):
                        with self._lock:
                            self.failed += items
                        break
                    with self._lock:
                        self.throttled += 1
                    time.sleep(min(float(exc.headers.get("Retry-After") or 1), 5.0))
                except (urllib.error.URLError, OSError):
                    with self._lock:
                        self.failed += items
                    break


def scrape(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of a process, from /proc; 0 for one that has exited."""
    try:
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS")) / 1024
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        return 0.0, 0.0
    return rss, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (melt serve's step process, multiprocessing's resource tracker)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:  # a thread may end between the listing and the read
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
    return sorted(set(found))


def tree_stats(pid: int, cpu_of_gone: dict[int, float]) -> dict[str, float]:
    """RSS (MiB) and CPU seconds of the server's process tree, in all and per process; the CPU
    of a process that has gone keeps counting with its last reading."""
    per = {p: proc_stats(p) for p in tree(pid)}
    for p, (_, cpu) in per.items():
        cpu_of_gone[p] = max(cpu, cpu_of_gone.get(p, 0.0))
    return {"rss_mib": sum(r for r, _ in per.values()), "cpu_s": sum(cpu_of_gone.values()),
            "receiver_rss_mib": per[pid][0], "receiver_cpu_s": per[pid][1],
            "scorer_rss_mib": max((r for p, (r, _) in per.items() if p != pid), default=0.0)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def run(args: argparse.Namespace) -> dict:
    from melt.core.config import load_settings
    from melt.pipeline.fitting import fit_detectors, save_models, training_split

    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    began = time.perf_counter()
    spans, logs, bundle = template(args.services, args.template_minutes, args.rpm, args.seed, args.logs_per_minute)
    first = int(min(bundle.traces["start_time"].min(), bundle.logs["timestamp"].min()).value)
    span_ns = args.template_minutes * 60 * 10**9
    factor = (len(bundle.traces) / (args.template_minutes * 60)) / args.spans  # event seconds per wall second
    per_minute = {"spans": len(bundle.traces) / args.template_minutes, "logs": len(bundle.logs) / args.template_minutes}
    print(f"template: {len(bundle.traces):,} spans, {len(bundle.logs):,} log lines over {args.template_minutes} min "
          f"({per_minute['spans'] / 60:,.0f} spans/s, {per_minute['logs'] / 60:,.0f} logs/s at its own pace) "
          f"in {time.perf_counter() - began:.0f}s", flush=True)
    server = None
    if args.baseline:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
    else:
        settings = load_settings(env={})
        models = fit_detectors(training_split(bundle, 0.5), args.models.split(","), settings, quiet=True)
        save_models(models, work / "models")
        config = work / "config.yaml"
        config.write_text(json.dumps({"serve": {"data_dir": str(work / "serve")}}))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "melt.cli", "--config", str(config), "serve", "--model",
                                   str(work / "models"), "--port", str(port), "--quiet"], cwd=REPO,
                                  stderr=open(work / "serve.log", "w"))
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1)
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
    log_rate = len(bundle.logs) / (args.template_minutes * 60) / factor  # logs keep their pace beside the spans
    print(f"event time runs at {factor:.4f}x the template's; logs at {log_rate:,.0f}/s beside {args.spans:,.0f} spans/s",
          flush=True)
    senders = [Sender(url, "traces", spans, args.spans, first, span_ns, factor, args.threads),
               Sender(url, "logs", logs, log_rate, first, span_ns, factor, args.threads)]
    threads = [threading.Thread(target=s.run, daemon=True) for s in senders]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    samples: list[dict] = []
    cpu_seen: dict[int, float] = {}
    window: deque = deque()
    try:
        while time.monotonic() - start < args.minutes * 60:
            time.sleep(5)
            now = time.monotonic() - start
            sample = {"t": now, "spans_acked": senders[0].acked, "logs_acked": senders[1].acked}
            if server is not None:
                if server.poll() is not None:
                    raise SystemExit(f"melt serve exited: {(work / 'serve.log').read_text()[-2000:]}")
                metrics = scrape(url)
                sample.update(**tree_stats(server.pid, cpu_seen), step_lag_s=metrics.get("melt_step_lag_seconds"),
                              position_age_s=metrics.get("melt_position_age_seconds"),
                              pending=metrics.get("melt_pending_bytes"),
                              spans_received=metrics.get("melt_received_spans_total"),
                              logs_received=metrics.get("melt_received_logs_total"))
            samples.append(sample)
            window.append(sample)
            while window and now - window[0]["t"] > 60:
                window.popleft()
            rate = {k: (window[-1][f"{k}_acked"] - window[0][f"{k}_acked"]) / max(window[-1]["t"] - window[0]["t"], 1e-9)
                    for k in ("spans", "logs")}
            lag = sample.get("step_lag_s")
            print(f"{now:6.0f}s spans/s {rate['spans']:8,.0f} logs/s {rate['logs']:8,.0f}"
                  + (f" step lag {lag:5.1f}s age {sample['position_age_s']:5.0f}s RSS {sample['rss_mib']:5.0f} MiB"
                     f" (scorer {sample['scorer_rss_mib']:5.0f}) CPU {sample['cpu_s']:6.0f}s"
                     f" queue {sample['pending'] / 2**20:5.1f} MiB" if server is not None and lag is not None else ""),
                  flush=True)
    finally:
        for sender in senders:
            sender.stop.set()
        for thread in threads:
            thread.join(60)
        if server is not None:
            time.sleep(2)
            final = scrape(url)
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    elapsed = samples[-1]["t"]
    result = {"seconds": elapsed, "spans_acked": senders[0].acked, "logs_acked": senders[1].acked,
              "spans_per_s": senders[0].acked / elapsed, "logs_per_s": senders[1].acked / elapsed,
              "throttled": senders[0].throttled + senders[1].throttled,
              "failed": senders[0].failed + senders[1].failed}
    if server is not None:
        by_minute = pd.DataFrame([{"minute": int(s["t"] // 60), "rss": s["rss_mib"]} for s in samples
                                  if s["t"] < args.minutes * 60])  # whole minutes only: not the last sample's few seconds
        per_minute_rss = by_minute.groupby("minute")["rss"].mean()  # a step's peak comes and goes within a minute
        lags = [s["step_lag_s"] for s in samples if s.get("step_lag_s") == s.get("step_lag_s")
                and s.get("step_lag_s") is not None]
        ages = [s["position_age_s"] for s in samples if s.get("position_age_s") == s.get("position_age_s")
                and s.get("position_age_s") is not None]
        result.update(spans_received=final.get("melt_received_spans_total"), logs_received=final.get("melt_received_logs_total"),
                      dropped=(senders[0].acked + senders[1].acked)
                      - (final.get("melt_received_spans_total", 0) + final.get("melt_received_logs_total", 0)),
                      step_lag_max_s=max(lags) if lags else None, step_lag_last_s=lags[-1] if lags else None,
                      position_age_max_s=max(ages) if ages else None,
                      position_age_last_minute_max_s=max((s["position_age_s"] for s in samples
                                                          if s["t"] > elapsed - 60 and s.get("position_age_s")),
                                                         default=None),
                      rss_per_minute_mib=[round(float(v)) for v in per_minute_rss],
                      rss_per_minute_peak_mib=[round(float(v)) for v in by_minute.groupby("minute")["rss"].max()],
                      rss_peak_mib=max(s["rss_mib"] for s in samples),
                      rss_minute_2_mib=float(per_minute_rss.get(1, float("nan"))),
                      rss_last_minute_mib=float(per_minute_rss.iloc[-1]),
                      server_cpu_share=samples[-1]["cpu_s"] / elapsed,
                      receiver_cpu_share=samples[-1]["receiver_cpu_s"] / elapsed,
                      steps_scored=final.get("melt_score_seconds_count{detector=span_latency}"),
                      score_seconds_per_step={name.split("=")[1].rstrip("}"): round(value / max(
                          final.get(name.replace("_sum", "_count"), 1), 1), 2)
                          for name, value in final.items() if name.startswith("melt_score_seconds_sum{")})
    print(json.dumps(result, indent=2), flush=True)
    if args.keep:
        print(f"kept: {work}", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=float, default=20_000, help="spans per second to send")
    parser.add_argument("--logs-per-minute", type=float, default=8_700.0,
                        help="background log lines per minute of the template (sets logs per span)")
    parser.add_argument("--threads", type=int, default=16, help="concurrent posters per signal")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--services", type=int, default=12)
    parser.add_argument("--template-minutes", type=int, default=20)
    parser.add_argument("--rpm", type=float, default=600.0, help="requests per minute of the generated template")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--baseline", action="store_true", help="send to a server that only acknowledges")
    parser.add_argument("--keep", action="store_true", help="keep the models and the server's data directory")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
