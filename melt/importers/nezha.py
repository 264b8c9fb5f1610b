"""Importer for the Nezha layout (FSE 2023 artifact; TrainTicket and OnlineBoutique datasets).

One directory per date, under ``rca_data/`` (fault cases) or ``construct_data/`` (fault-free)::

    <date>/trace/HH_MM_trace.csv   TraceID,SpanID,ParentID,PodName,OperationName,StartTimeUnixNano,EndTimeUnixNano,Duration(us)
    <date>/log/HH_MM_log.csv       Timestamp,TimeUnixNano,Node,PodName,Container,TraceID,SpanID,Log(JSON with a 'log' field)
    <date>/metric/<pod>_metric.csv one wide 1-minute table per pod; front_service.csv for the entry point
    <date>/metric/source_50.csv    (OnlineBoutique) median latency per call edge at the caller; destination_50.csv at the callee
    <date>/<date>-fault_list.json  {"HH": [{"inject_time", "inject_pod", "inject_type"}, ...]}

Services are pod names without their last two ``-`` parts. ``inject_time`` is read as UTC (the
``inject_timestamp`` field is off by hours on some dates and is ignored).
"""

from __future__ import annotations

import csv
import json
import re
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melt.core.errors import SourceError
from melt.core.progress import log, progress
from melt.core.schema import PLAUSIBLE_TIMES
from melt.core.settings import NezhaSettings
from melt.core.timeutil import format_duration
from melt.importers.columns import (
    POD_SUFFIX,
    duration_ms,
    note_problems,
    numbers,
    service_names,
    split_level,
    to_utc,
    unreadable,
    wide_to_long,
)
from melt.importers.sources import csv_batches, read_csv_chunks
from melt.importers.writer import BundleWriter

SPAN_COLUMNS = ["TraceID", "SpanID", "ParentID", "PodName", "OperationName", "StartTimeUnixNano", "Duration"]
LOG_COLUMNS = ["TimeUnixNano", "PodName", "TraceID", "SpanID", "Log"]
SUBSETS = {"rca": "rca_data", "normal": "construct_data"}
EDGE_SIDES = {"source": "client", "destination": "server"}  # per-edge tables: measured at the caller / callee
_DOCKER_LINE = r'^\{"log":"(?P<line>(?:[^"\\]|\\.)*)","stream":"[^"]*","time":"[^"]*"\}$'


def date_directories(src: str | Path, subset: str = "rca") -> list[Path]:
    """The per-date directories to import: ``src`` itself if it is one, else ``src/<subset dir>/*``.

    Raises:
        SourceError: nothing in the Nezha layout is found under ``src``.
    """
    root = Path(src)
    if not root.is_dir():
        raise SourceError(f"import source not found or not a directory: {root}")
    if subset not in SUBSETS:
        raise SourceError(f"unknown nezha subset {subset!r} (use {' or '.join(SUBSETS)})")
    if any((root / part).is_dir() for part in ("trace", "log", "metric")):
        return [root]
    parent = root / SUBSETS[subset]
    dates = sorted(p for p in parent.glob("*") if p.is_dir()) if parent.is_dir() else []
    if not dates:
        raise SourceError(f"{root}: not in the Nezha layout (no {SUBSETS[subset]}/<date>/ with trace/, log/ or metric/)")
    return dates


def import_nezha(src: str | Path, writer: BundleWriter, settings: NezhaSettings, quiet: bool = False) -> dict[str, Any]:
    """Import every date directory under ``src`` into ``writer``; return the ground truth.

    ``settings``: the ``import.nezha`` section (subset, fault length, the service regex, the
    clock skew past which a metric table is left out). Files under ``metric/`` that are not metric
    tables are skipped, and a table whose clock lies more than ``max_clock_skew`` from the other
    tables' is left out, each with a note (:func:`import_metric_tables`).
    """
    faults: list[dict[str, Any]] = []
    service_regex, skew = settings.service_regex, settings.max_clock_skew
    dates = date_directories(src, settings.subset)
    for date in progress(dates, "import", quiet, total=len(dates)):
        for kind, convert, required in (("trace", _spans, SPAN_COLUMNS), ("log", _logs, LOG_COLUMNS)):
            files = sorted((date / kind).glob("*.csv"))
            total = 0
            foreign = partial(_skip_foreign, writer, kind)
            for chunk, lines, sources, done in csv_batches(files, writer.bad_rows, required=required, foreign=foreign):
                frame, problems = convert(chunk, service_regex)
                total += writer.add("traces" if kind == "trace" else "logs", frame, sources, lines, problems)
                log(f"{date.name} {kind}: {done}/{len(files)} files, {total:,} rows", quiet, stage="melt import")
        imported = import_metric_tables(date / "metric", writer, service_regex, skew)
        if imported:
            log(f"{date.name} metric: {imported} files", quiet, stage="melt import")
        faults += fault_list(date, settings.fault_duration, service_regex)
    return {"faults": faults, "source": {"format": "nezha", "subset": settings.subset}}


def fault_list(date: Path, duration: pd.Timedelta, service_regex: re.Pattern[str] | str = POD_SUFFIX) -> list[dict[str, Any]]:
    """The faults of one date directory as melt truth records (empty when there is no fault list)."""
    files = sorted(date.glob("*fault_list.json"))
    if not files:
        return []
    try:
        groups = json.loads(files[0].read_text())
    except json.JSONDecodeError as exc:
        raise SourceError(f"{files[0]}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    # {"<hour>": [{"inject_time", "inject_pod", "inject_type"}, ...], ...}, as Nezha writes it
    if not isinstance(groups, dict) or not all(isinstance(hour, list) for hour in groups.values()):
        raise SourceError(f"{files[0]}: not a Nezha fault list (a JSON object of hours, each a list of faults; "
                          f"got {type(groups).__name__})")
    cases = [case for hour in sorted(groups) for case in groups[hour]]
    if not all(isinstance(case, dict) for case in cases):
        raise SourceError(f"{files[0]}: a fault entry is not a JSON object")
    if not cases:
        return []
    table = pd.DataFrame(cases)
    missing = {"inject_time", "inject_pod", "inject_type"} - set(table.columns)
    if missing:
        raise SourceError(f"{files[0]}: fault entries lack {', '.join(sorted(missing))}")
    starts = pd.to_datetime(table["inject_time"], utc=True, errors="coerce")
    if starts.isna().any():
        raise SourceError(f"{files[0]}: unreadable inject_time {table['inject_time'][starts.isna()].iloc[0]!r}")
    services = service_names(table["inject_pod"], service_regex)
    return [
        {"id": f"{date.name}-{index + 1:02d}", "root_cause_service": str(service), "root_cause_instance": str(pod),
         "type": str(kind), "start": start.isoformat(), "end": (start + duration).isoformat()}
        for index, (service, pod, kind, start) in enumerate(
            zip(services, table["inject_pod"], table["inject_type"], starts, strict=True))
    ]


def _spans(chunk: pd.DataFrame, service_regex: re.Pattern[str] | str) -> tuple[pd.DataFrame, pd.Series]:
    start = to_utc(chunk["StartTimeUnixNano"], "ns")
    duration = duration_ms(chunk["Duration"], "us")
    problems = pd.Series(pd.NA, index=chunk.index, dtype="string")
    problems = note_problems(problems, unreadable(chunk["StartTimeUnixNano"], start), "StartTimeUnixNano is not a number")
    problems = note_problems(problems, unreadable(chunk["Duration"], duration), "Duration is not a number")
    frame = pd.DataFrame({
        "trace_id": chunk["TraceID"], "span_id": chunk["SpanID"], "parent_span_id": chunk["ParentID"],
        "span_name": chunk["OperationName"], "service_name": service_names(chunk["PodName"], service_regex),
        "start_time": start, "duration": duration, "attr.k8s.pod.name": chunk["PodName"],
    })
    return frame, problems


def _logs(chunk: pd.DataFrame, service_regex: re.Pattern[str] | str) -> tuple[pd.DataFrame, pd.Series]:
    stamps = to_utc(chunk["TimeUnixNano"], "ns")
    broken = (stamps.isna() | (stamps < PLAUSIBLE_TIMES[0])).to_numpy()
    if broken.any() and "Timestamp" in chunk.columns:  # TimeUnixNano is sometimes garbage; Timestamp is not
        stamps = stamps.mask(broken, to_utc(chunk["Timestamp"].where(broken)))
    lines, bad_log = docker_log_lines(chunk["Log"])
    level, message = split_level(lines)
    problems = pd.Series(pd.NA, index=chunk.index, dtype="string")
    problems = note_problems(problems, bad_log, "Log is not a JSON object with a 'log' field")
    frame = pd.DataFrame({
        "timestamp": stamps, "service": service_names(chunk["PodName"], service_regex), "level": level,
        "message": message, "trace_id": chunk["TraceID"], "span_id": chunk["SpanID"], "instance": chunk["PodName"],
    })
    return frame, problems


def docker_log_lines(raw: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """The ``log`` field of Docker json-file records, and a mask of records that are not such JSON.

    The common shape is cut out with one RE2 regex over the whole column (pyarrow), and all the
    cut-out JSON strings are unescaped by a single ``json.loads`` of one array built from them.
    Only records in another shape are parsed one by one.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pa.array(raw.astype("string").fillna(""), type=pa.string())
    matched = pc.extract_regex(text, _DOCKER_LINE)
    found = ~matched.is_null().to_numpy(zero_copy_only=False)
    escaped = pc.filter(pc.struct_field(matched, "line"), pa.array(found)).to_pylist()
    lines = np.full(len(raw), None, dtype=object)
    bad = np.zeros(len(raw), dtype=bool)
    try:
        lines[found] = json.loads("[" + ",".join(f'"{line}"' for line in escaped) + "]", strict=False)
    except json.JSONDecodeError:  # an invalid escape somewhere: unescape one by one to find it
        found = found & False
    for position in np.flatnonzero(~found):
        try:
            lines[position] = str(json.loads(raw.iloc[position])["log"])
        except (json.JSONDecodeError, KeyError, TypeError):
            bad[position] = True
    return pd.Series(lines, index=raw.index, dtype="string"), bad


def import_metric_tables(directory: Path, writer: BundleWriter, service_regex: re.Pattern[str] | str,
                         max_clock_skew: pd.Timedelta) -> int:
    """Import the metric tables of one ``metric/`` directory; return how many were imported.

    Three kinds of table are known, told apart by their header:
    - per pod (``TimeStamp``, ``PodName``) or per entry point (``TimeStamp``, ``ServiceName``):
      one wide 1-minute row per pod;
    - per call edge (``timestamp`` and ``caller_callee`` columns, OnlineBoutique's
      ``source_50.csv`` and ``destination_50.csv``): the median latency of each edge in seconds, as
      measured at the caller (``source_``) or at the callee (``destination_``). They become the
      OpenTelemetry-style series ``rpc.client.duration.p50`` of the caller and
      ``rpc.server.duration.p50`` of the callee, each with the other end in ``peer``;
    - anything else (``dependency.csv``'s ``Source,Target,Weight``) is not a metric table: skipped,
      with a note.
    A table whose median time lies more than ``max_clock_skew`` from the median of the
    directory's tables (OnlineBoutique's 2022-08-22 adservice table is dated 2028) would stretch
    the bundle's period over years and score a clock error as an anomaly: it is left out, with a
    note (:func:`_clock_centre`), as is a table with no readable time.
    """
    tables = {file: _table_kind(file) for file in sorted(directory.glob("*.csv"))}
    for file, kind in tables.items():
        if kind is None:
            writer.note(f"skipped {file}: not a metric table (columns {', '.join(_header(file))})")
    known = {file: kind for file, kind in tables.items() if kind is not None}
    clocks = {file: _median_time(file, "TimeStamp" if kind != "edges" else "timestamp") for file, kind in known.items()}
    centre = _clock_centre(directory.parent.name, clocks)
    imported = 0
    services: set[str] = set()
    for file, kind in sorted(known.items(), key=lambda item: item[1] == "edges"):  # pods first: edges need names
        clock = clocks[file]
        if pd.isna(clock):
            writer.note(f"excluded {file}: no readable time in its {'TimeStamp' if kind != 'edges' else 'timestamp'} column")
            continue
        if centre is not None and abs(clock - centre) > max_clock_skew:
            writer.note(f"excluded {file}: its clock ({clock:%Y-%m-%d %H:%M}) is more than "
                        f"{format_duration(max_clock_skew)} from the other tables' ({centre:%Y-%m-%d %H:%M})")
            continue
        for chunk, lines in read_csv_chunks(file, writer.bad_rows):
            if kind == "edges":
                frame, frame_lines, problems = _in_file(file, _edge_metrics, chunk, lines, file.name, services)
            else:
                frame, frame_lines, problems = _in_file(file, _metrics, chunk, lines, service_regex)
                services.update(frame["service"].dropna().unique().tolist())
            writer.add("metrics", frame, str(file), frame_lines, problems)
        imported += 1
    return imported


def _skip_foreign(writer: BundleWriter, kind: str, file: Path, columns: list[str]) -> None:
    """A file under ``trace/`` or ``log/`` that is not such a table: skipped, with a note."""
    writer.note(f"skipped {file}: not a {kind} table (columns {', '.join(columns[:8])})")


def _header(file: Path) -> list[str]:
    with file.open(encoding="utf-8", errors="replace") as handle:
        return next(csv.reader([handle.readline()]), [])


def _table_kind(file: Path) -> str | None:
    """``pods`` (per pod or entry point), ``edges`` (per call edge) or ``None`` (not a metric table)."""
    columns = _header(file)
    if "TimeStamp" in columns and ("PodName" in columns or "ServiceName" in columns):
        return "pods"
    if "timestamp" in columns and file.stem.split("_")[0] in EDGE_SIDES and any("_" in c for c in columns):
        return "edges"
    return None


def _clock_centre(date_name: str, clocks: dict[Path, pd.Timestamp]) -> pd.Timestamp | None:
    """The time the directory's tables should agree on: the median of their median times where
    three or more read (one broken clock cannot move it), else noon of the directory's date, else
    ``None`` (nothing to compare with)."""
    readable = pd.Series(list(clocks.values()), dtype="datetime64[ns, UTC]").dropna()
    if len(readable) >= 3:
        return readable.median()
    named = pd.to_datetime(date_name, format="%Y-%m-%d", utc=True, errors="coerce")
    return None if pd.isna(named) else named + pd.Timedelta("12h")


def _median_time(file: Path, column: str) -> pd.Timestamp:
    """The median of a table's epoch-second time column (NaT when none reads)."""
    stamps = pd.read_csv(file, usecols=[column], dtype=str)[column]
    return to_utc(stamps, "s").median()


def _edge_metrics(chunk: pd.DataFrame, lines: pd.Series, name: str,
                  services: set[str]) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """A per-edge latency table (one ``caller_callee`` column per edge, seconds) to long metric rows."""
    side = EDGE_SIDES[name.split("_")[0]]
    quantile = name.rsplit(".", 1)[0].split("_")[-1]
    edges = [c for c in chunk.columns if c not in ("time", "timestamp")]
    stamps = to_utc(chunk["timestamp"], "s")
    pairs = [split_edge(column, services) for column in edges]
    values = np.column_stack([numbers(chunk[c]) for c in edges]) if edges else np.empty((len(chunk), 0))
    own, peer = (0, 1) if side == "client" else (1, 0)
    long = pd.DataFrame({
        "timestamp": np.repeat(stamps.to_numpy(), len(edges)),
        "service": np.tile(np.array([p[own] for p in pairs], dtype=object), len(chunk)),
        "metric": f"rpc.{side}.duration.p{quantile}",
        "value": values.ravel(),
        "peer": np.tile(np.array([p[peer] for p in pairs], dtype=object), len(chunk)),
    })
    problems = pd.Series(pd.NA, index=long.index, dtype="string")
    bad_time = np.repeat(unreadable(chunk["timestamp"], stamps), len(edges))
    return long, pd.Series(np.repeat(lines.to_numpy(), len(edges))), note_problems(problems, bad_time,
                                                                                   "timestamp is not a number")


def split_edge(column: str, services: set[str]) -> tuple[str, str]:
    """``caller_callee`` -> (caller, callee): at the underscore whose two sides are both known
    services, else at the first underscore."""
    cuts = [i for i, char in enumerate(column) if char == "_"]
    for cut in cuts:
        if column[:cut] in services and column[cut + 1:] in services:
            return column[:cut], column[cut + 1:]
    if not cuts:
        raise SourceError(f"edge column {column!r} is not caller_callee")
    return column[:cuts[0]], column[cuts[0] + 1:]


def _metrics(chunk: pd.DataFrame, lines: pd.Series, service_regex: re.Pattern[str] | str) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """A wide per-pod (or front-end) metric table to long format, one row per (minute, metric)."""
    _require(chunk, ["TimeStamp"])
    if "PodName" in chunk.columns:
        instance = chunk["PodName"].astype("string")
        service = service_names(instance, service_regex)
    elif "ServiceName" in chunk.columns:
        instance = service = chunk["ServiceName"].astype("string").str.lower()
    else:
        raise SourceError("metric table has neither PodName nor ServiceName")
    values = chunk.drop(columns=[c for c in ("Time", "TimeStamp", "PodName", "ServiceName") if c in chunk.columns])
    stamps = to_utc(chunk["TimeStamp"], "s")  # converted before the reshape: once per row, not per metric
    wide = pd.concat([pd.DataFrame({"timestamp": stamps, "service": service, "instance": instance}), values], axis=1)
    long, long_lines = wide_to_long(wide, lines, "metric table")
    problems = pd.Series(pd.NA, index=long.index, dtype="string")
    bad_time = np.repeat(unreadable(chunk["TimeStamp"], stamps), len(values.columns))
    return long, long_lines, note_problems(problems, bad_time, "TimeStamp is not a number")


def _in_file(file: Path, convert: Any, *args: Any) -> Any:
    """Run ``convert`` and name ``file`` in any layout error it raises."""
    try:
        return convert(*args)
    except SourceError as exc:
        raise SourceError(f"{file}: {exc}") from None


def _require(chunk: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in chunk.columns]
    if missing:
        raise SourceError(f"not in the Nezha layout: column {missing[0]} is missing (have: {', '.join(chunk.columns)})")
