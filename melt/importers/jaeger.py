"""Importer for Jaeger's JSON export (the UI's "Download JSON" and the ``/api/traces`` response).

Accepted shapes, as one document per file (pretty-printed or not) or one per line:

- ``{"data": [trace, ...]}``: the ``/api/traces`` response and the UI download;
- ``[trace, ...]`` and a bare ``trace`` object (``{"traceID": ..., "spans": [...], "processes": {...}}``);
- ``[span, ...]`` and a bare ``span`` object: spans with ``traceID``, ``spanID``, ``operationName``,
  ``startTime``, ``duration`` and ``process`` (``{"serviceName": ..., "tags": [...]}``) or ``processID``,
  as Elasticsearch/OpenSearch span documents are.

Span ``references`` give the parent (``CHILD_OF``, else the first ``FOLLOWS_FROM``, marked as an
asynchronous ``consumer`` when no ``span.kind`` tag says otherwise); times are microseconds. Tags
become ``attr.*``; span logs become log lines of their span. A span with a bad field (a duration
that is not a number, a reference that is not an object) is one bad row; the rest of its trace is kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from melt.core.progress import log, progress
from melt.importers.bad_rows import BadRows
from melt.importers.otlp import ITEM_ERRORS, hex_id, item_name, json_kind, reason_of, shown, status_code
from melt.importers.sources import json_documents, source_files
from melt.importers.writer import BundleWriter

SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
LOG_LEVEL_KEYS = ("level", "log.level", "severity")


def import_jaeger(src: str | Path, writer: BundleWriter, *, chunk_rows: int = 100_000, quiet: bool = False) -> None:
    """Import every Jaeger JSON file under ``src`` into ``writer``."""
    files = source_files(src, SUFFIXES)
    for index, file in enumerate(progress(files, "import", quiet, total=len(files)), start=1):
        spans: list[dict[str, Any]] = []
        logs: list[dict[str, Any]] = []
        unresolved: set[str] = set()
        for line, trace in _traces(file, writer.bad_rows):
            where = f"{file}:{line}"
            try:
                trace_spans, trace_logs = _trace_rows(trace, line, lambda reason, at=where: writer.bad_rows.add(at, reason),
                                                      unresolved)
            except ITEM_ERRORS as exc:
                writer.bad_rows.add(where, f"not a Jaeger trace ({reason_of(exc)})")
                continue
            spans += trace_spans
            logs += trace_logs
            if len(spans) >= chunk_rows:
                _flush(spans, logs, writer, file)
        _flush(spans, logs, writer, file)
        if unresolved:
            writer.note(f"{file}: spans name processID {', '.join(sorted(unresolved)[:3])} without a 'processes' map "
                        "to resolve it; the processID stands in for their service")
        log(f"{file.name}: {index}/{len(files)} files", quiet, stage="melt import")


def _is_span(value: Any) -> bool:
    return isinstance(value, dict) and "spans" not in value and ("spanID" in value or "operationName" in value)


def _traces(file: Path, bad_rows: BadRows) -> Iterator[tuple[int, dict[str, Any]]]:
    """Every trace object in ``file`` with the line it starts on; bare spans are grouped into one trace per document."""
    for line, document in json_documents(file, bad_rows):
        where = f"{file}:{line}"
        if isinstance(document, dict) and "spans" in document:
            yield line, document
        elif _is_span(document):
            yield line, {"spans": [document]}
        elif isinstance(document, dict) and isinstance(document.get("data"), list):
            yield from _list_traces(document["data"], line, where, bad_rows)
        elif isinstance(document, dict) and document.get("errors"):
            bad_rows.add(where, f"a Jaeger API error response ({str(document['errors'])[:160]})")
        elif isinstance(document, list):
            yield from _list_traces(document, line, where, bad_rows)
        else:
            bad_rows.add(where, "neither a Jaeger trace, a span, a list of them nor {\"data\": [...]}, but "
                                + (f"an object with keys {', '.join(map(str, list(document)[:5]))}"[:160]
                                   if isinstance(document, dict) and document else json_kind(document)))


def _list_traces(items: list[Any], line: int, where: str, bad_rows: BadRows) -> Iterator[tuple[int, dict[str, Any]]]:
    """The traces of a list of traces, or of bare spans (one trace of them all)."""
    spans = []
    for position, item in enumerate(items):
        if _is_span(item):
            spans.append(item)
        elif isinstance(item, dict) and "spans" in item:
            yield line, item
        else:
            bad_rows.add(where, f"item {position} of the list is neither a Jaeger trace nor a span ({json_kind(item)})")
    if spans:
        yield line, {"spans": spans}


def _tags(tags: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Jaeger ``[{"key": ..., "value": ...}]`` as a dict; object and list values become JSON text."""
    if tags is not None and not isinstance(tags, list):
        raise TypeError(f"tags are {json_kind(tags)}, not a list")
    out = {}
    for tag in tags or []:
        if not isinstance(tag, dict) or not isinstance(tag.get("key"), str):
            raise TypeError(f"tag {shown(tag, 60)} is not a {{\"key\": text, \"value\": ...}} object")
        value = tag.get("value")
        out[tag["key"]] = json.dumps(value) if isinstance(value, dict | list) else value
    return out


def _micros(value: Any, field: str) -> int:
    """A Jaeger time (microseconds since the epoch) as an int."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{field} {shown(value)} is not a number of microseconds")
    try:
        return int(value)
    except (ValueError, OverflowError):
        raise ValueError(f"{field} {shown(value)} is not a number of microseconds") from None


def _trace_rows(trace: dict[str, Any], line: int, bad: Callable[[str], None],
                unresolved: set[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The span and log rows of one trace; a span that cannot be read goes to ``bad`` alone."""
    processes = trace.get("processes") or {}
    if not isinstance(processes, dict):
        raise TypeError(f"'processes' is {json_kind(processes)}, not an object")
    if not isinstance(trace["spans"], list):
        raise TypeError(f"'spans' is {json_kind(trace['spans'])}, not a list")
    spans, logs = [], []
    for span in trace["spans"]:
        try:
            row, span_logs = _span_rows(span, processes, line, unresolved)
        except ITEM_ERRORS as exc:
            bad(f"bad span{item_name(span, 'spanID')} ({reason_of(exc)})")
            continue
        spans.append(row)
        logs += span_logs
    return spans, logs


def _span_rows(span: dict[str, Any], processes: dict[str, Any], line: int,
               unresolved: set[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if not isinstance(span, dict):
        raise TypeError(f"a span is {json_kind(span)}, not an object")
    process = span.get("process")
    process_id = span.get("processID")
    if process is None and isinstance(process_id, str | int):
        process = processes.get(str(process_id))
        if process is None:
            unresolved.add(str(process_id))
            process = {"serviceName": str(process_id)}
    process = process or {}
    if not isinstance(process, dict):
        raise TypeError(f"'process' is {json_kind(process)}, not an object")
    process_tags = _tags(process.get("tags"))
    tags = _tags(span.get("tags"))
    references = span.get("references") or []
    if not isinstance(references, list) or not all(isinstance(r, dict) for r in references):
        raise TypeError("'references' is not a list of objects")
    parent = next((r for r in references if r.get("refType") == "CHILD_OF"), None) or \
        next((r for r in references if r.get("refType") == "FOLLOWS_FROM"), None)
    kind = tags.get("span.kind")
    if kind is None and parent is not None and parent.get("refType") == "FOLLOWS_FROM":
        kind = "consumer"
    failed = str(tags.get("error", "")).lower() == "true" or str(tags.get("otel.status_code", "")) == "ERROR"
    http = status_code(tags.get("http.response.status_code", tags.get("http.status_code")))
    row = {f"attr.{k}": v for k, v in {**process_tags, **tags}.items()}
    trace_id, span_id = hex_id(span.get("traceID")), hex_id(span.get("spanID"))
    instance = process_tags.get("hostname") or process_tags.get("k8s.pod.name")
    duration = span.get("duration")
    try:
        if isinstance(duration, bool) or not isinstance(duration, int | float | str):
            raise ValueError
        duration_ms = float(duration) / 1e3
    except (ValueError, OverflowError):
        raise ValueError(f"duration {shown(duration)} is not a number of microseconds") from None
    service = process.get("serviceName")
    row.update({
        "trace_id": trace_id, "span_id": span_id, "parent_span_id": hex_id(parent.get("spanID")) if parent else None,
        "span_name": span.get("operationName"), "service_name": None if service is None else str(service),
        "start_time": _micros(span.get("startTime"), "startTime"), "duration": duration_ms,
        "span_kind": kind, "status_code": http if http is not None else 500 if failed else None,
        "_line": line,
    })
    logs = []
    for entry in span.get("logs") or []:
        if not isinstance(entry, dict):
            raise TypeError(f"a span log is {json_kind(entry)}, not an object")
        fields = _tags(entry.get("fields"))
        level = next((str(fields[k]) for k in LOG_LEVEL_KEYS if k in fields), None)
        if level is None:
            level = "ERROR" if fields.get("event") == "error" or "error.object" in fields else "INFO"
        message = str(fields["message"]) if "message" in fields else \
            " ".join(f"{k}={v}" for k, v in fields.items() if k not in LOG_LEVEL_KEYS)
        logs.append({"timestamp": _micros(entry.get("timestamp"), "log timestamp"),
                     "service": row["service_name"], "instance": instance, "level": level, "message": message,
                     "trace_id": trace_id, "span_id": span_id, "_line": line})
    return row, logs


def _flush(spans: list[dict[str, Any]], logs: list[dict[str, Any]], writer: BundleWriter, file: Path) -> None:
    writer.add_records("traces", spans, str(file), time_unit="us")
    writer.add_records("logs", logs, str(file), time_unit="us")
