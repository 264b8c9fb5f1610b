"""Throughput of `melt serve`'s ingest path without HTTP: protobuf decode, checks and segment writes.

Requests are built as the OpenTelemetry SDK's ``BatchSpanProcessor`` / ``BatchLogRecordProcessor``
send them: 512 spans (or log records) per request, one resource with the SDK's attributes, spans
with seven ``http.*``/``net.*`` attributes, log records with a varying body. Measured, in CPU
seconds of this process (``time.process_time``) so that idle waits do not count:

- decode: protobuf -> checked bundle frames (:class:`melt.serve.otlp_http.OtlpDecoder`), one
  request per call and ``--batch`` requests per call (as the receiver batches under load);
- baseline: ``google.protobuf.json_format.MessageToDict`` then the same mapping and checks;
- store: decode in batches, then :class:`melt.serve.segments.SegmentStore` group commit (parquet,
  fsync, rename) of an interleaved stream of span and log requests, until every future resolved.

Prints one line per measurement and the peak RSS.

    .venv/bin/python benchmarks/serve_ingest.py [--requests 80] [--batch 8]
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from melt.importers.otlp import flatten_request
from melt.importers.writer import checked_rows, records_frame
from melt.serve.otlp_http import PROTOBUF, OtlpDecoder
from melt.serve.segments import SegmentStore

BATCH = 512
RESOURCE = (("service.name", "checkout"), ("service.instance.id", "checkout-7d9f-abc"),
            ("telemetry.sdk.language", "python"), ("telemetry.sdk.name", "opentelemetry"),
            ("telemetry.sdk.version", "1.45.2"), ("host.name", "node-1"))
T0 = 1_700_000_000_000_000_000


def _pair(key: str, value: Any) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def span_request(seed: int) -> bytes:
    """512 server spans as one ``ExportTraceServiceRequest``, serialized."""
    rng = random.Random(seed)
    request = ExportTraceServiceRequest()
    block = request.resource_spans.add()
    block.resource.attributes.extend(_pair(k, v) for k, v in RESOURCE)
    scope = block.scope_spans.add()
    scope.scope.name = "opentelemetry.instrumentation.flask"
    for i in range(BATCH):
        span = scope.spans.add()
        span.trace_id, span.span_id = rng.randbytes(16), rng.randbytes(8)
        span.parent_span_id = rng.randbytes(8) if i % 4 else b""
        span.name, span.kind = "GET /api/orders/{id}", 2
        span.start_time_unix_nano = T0 + (seed * BATCH + i) * 50_000
        span.end_time_unix_nano = span.start_time_unix_nano + rng.randint(1_000_000, 50_000_000)
        span.attributes.extend([_pair("http.method", "GET"), _pair("http.route", "/api/orders/{id}"),
                                _pair("http.status_code", 500 if rng.random() < 0.01 else 200),
                                _pair("http.url", f"http://checkout:8080/api/orders/{rng.randint(1, 10**6)}"),
                                _pair("net.peer.name", "frontend"), _pair("http.user_agent", "python-requests/2.31"),
                                _pair("http.flavor", "1.1")])
    return request.SerializeToString()


def log_request(seed: int) -> bytes:
    """512 log records as one ``ExportLogsServiceRequest``, serialized."""
    rng = random.Random(seed)
    request = ExportLogsServiceRequest()
    block = request.resource_logs.add()
    block.resource.attributes.extend(_pair(k, v) for k, v in RESOURCE)
    scope = block.scope_logs.add()
    for i in range(BATCH):
        record = scope.log_records.add()
        record.time_unix_nano = T0 + (seed * BATCH + i) * 50_000
        record.observed_time_unix_nano = record.time_unix_nano + 1000
        record.severity_number, record.severity_text = 9, "INFO"
        record.body.string_value = (f"order {rng.randint(1, 10**6)} placed for user {rng.randint(1, 10**4)} "
                                    f"in {rng.random() * 100:.1f} ms")
        record.trace_id, record.span_id = rng.randbytes(16), rng.randbytes(8)
        record.attributes.extend([_pair("code.filepath", "/app/orders.py"), _pair("code.lineno", 42)])
    return request.SerializeToString()


def _cpu(work: Any) -> float:
    began = time.process_time()
    work()
    return time.process_time() - began


def _baseline(signal: str, body: bytes) -> None:
    message = (ExportTraceServiceRequest if signal == "traces" else ExportLogsServiceRequest).FromString(body)
    rows: dict[str, list[dict[str, Any]]] = {"traces": [], "logs": [], "metrics": []}
    flatten_request(MessageToDict(message), 1, rows, {}, lambda reason: None)
    for name, records in rows.items():
        if records:
            frame, _, problems = records_frame(name, records, time_unit="ns")
            checked_rows(name, frame, problems)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=80, help="requests per signal")
    parser.add_argument("--batch", type=int, default=8, help="requests decoded together")
    args = parser.parse_args(argv)
    bodies = {"traces": [span_request(i) for i in range(args.requests)],
              "logs": [log_request(i) for i in range(args.requests)]}
    rows = args.requests * BATCH
    name = {"traces": "spans", "logs": "log records"}
    print(f"{args.requests} requests of {BATCH} per signal; body {len(bodies['traces'][0]):,} B (spans), "
          f"{len(bodies['logs'][0]):,} B (logs)")
    decoder = OtlpDecoder()
    for signal, items in bodies.items():
        decoder.decode(signal, items[0], PROTOBUF)  # warm-up
        single = _cpu(lambda s=signal, b=items: [decoder.decode(s, body, PROTOBUF) for body in b])
        batched = _cpu(lambda s=signal, b=items: [decoder.decode_batch([(s, body, PROTOBUF) for body in
                                                                         b[i: i + args.batch]])
                                                  for i in range(0, len(b), args.batch)])
        base = _cpu(lambda s=signal, b=items: [_baseline(s, body) for body in b])
        print(f"decode {signal}: {rows / single:,.0f} {name[signal]}/s one request per call, "
              f"{rows / batched:,.0f}/s {args.batch} per call; baseline MessageToDict: {rows / base:,.0f}/s")
    with tempfile.TemporaryDirectory() as folder:
        store = SegmentStore(Path(folder), retention=pd.Timedelta(days=2), commit_interval=pd.Timedelta("200ms"),
                             max_pending_bytes=2**30)
        store.start()
        stream = [(signal, body) for pair in zip(bodies["traces"], bodies["logs"], strict=True)
                  for signal, body in zip(("traces", "logs"), pair, strict=True)]
        began_wall, began_cpu = time.perf_counter(), time.process_time()
        futures = []
        for i in range(0, len(stream), args.batch):
            batch = decoder.decode_batch([(s, b, PROTOBUF) for s, b in stream[i: i + args.batch]])
            futures.append(store.submit(batch.frames))
            decoder.commit(batch)
        for future in futures:
            future.result()
        wall, cpu = time.perf_counter() - began_wall, time.process_time() - began_cpu
        store.close()
        segments = sum(len(store.segments(s)) for s in ("traces", "logs"))
        print(f"decode + segments: {rows:,} spans and {rows:,} log records in {wall:.2f} s wall, {cpu:.2f} s CPU "
              f"({segments} segments): {rows / cpu:,.0f} spans/s + as many logs/s per CPU second; "
              f"20k spans/s + 20k logs/s would take {20_000 / (rows / cpu):.2f} of a core")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
