"""Importers: bring users' data into a melt bundle (``melt import FORMAT SRC --out BUNDLE``).

Formats: ``otlp`` (OpenTelemetry OTLP/JSON lines), ``jaeger`` (Jaeger JSON export), ``csv`` and
``parquet`` (generic tables with a column mapping) and ``nezha`` (the Nezha / TrainTicket layout).
Every importer streams its source in chunks through :class:`~melt.importers.writer.BundleWriter`,
which counts bad rows instead of failing, and writes a normal bundle that every melt command reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from melt.core.errors import SourceError
from melt.importers.bad_rows import BadRows
from melt.importers.writer import BundleWriter, ImportSummary

FORMATS: tuple[str, ...] = ("otlp", "jaeger", "csv", "parquet", "nezha")


def import_source(fmt: str, src: str | Path, out: str | Path, config: dict[str, Any], *,
                  table: dict[str, Any] | None = None, nezha: dict[str, Any] | None = None,
                  strict: bool = False, force: bool = False, quiet: bool = False) -> ImportSummary:
    """Import ``src`` in format ``fmt`` into the bundle directory ``out``.

    Args:
        fmt: one of :data:`FORMATS`.
        src: a file or a directory of files.
        out: the bundle directory to write.
        config: the loaded melt config; its ``import`` section gives the defaults.
        table: overrides of ``import.table`` (csv/parquet).
        nezha: overrides of ``import.nezha``.
        strict: stop at the first bad row instead of counting it.
        force: replace an existing bundle at ``out``.
        quiet: no progress on stderr.

    Raises:
        SourceError: unknown format, unreadable source, a mapping that cannot work, or (strict) a bad row.
    """
    if fmt not in FORMATS:
        raise SourceError(f"unknown import format {fmt!r} (known: {', '.join(FORMATS)})")
    settings = config["import"]
    bad_rows = BadRows(strict=strict, shown=int(settings["bad_rows_shown"]))
    writer = BundleWriter(out, bad_rows, chunk_rows=int(settings["chunk_rows"]),
                          chunk_mib=float(settings["chunk_mib"]), force=force, quiet=quiet)
    truth = None
    provenance: dict[str, Any] = {"format": fmt, "source": str(src)}
    if fmt == "otlp":
        from melt.importers.otlp import import_otlp

        import_otlp(src, writer, quiet=quiet)
    elif fmt == "jaeger":
        from melt.importers.jaeger import import_jaeger

        import_jaeger(src, writer, quiet=quiet)
    elif fmt in ("csv", "parquet"):
        from melt.importers.table import TableOptions, import_table

        chosen = {**settings["table"], **{k: v for k, v in (table or {}).items() if v is not None}}
        options = TableOptions(signal=chosen["signal"], column_map=dict(chosen["map"]), wide=bool(chosen["wide"]),
                               time_unit=chosen["time_unit"], duration_unit=chosen["duration_unit"],
                               service_from=chosen["service_from"], service_regex=chosen["service_regex"],
                               delimiter=chosen["delimiter"])
        provenance["table"] = {**chosen, "map": dict(chosen["map"])}
        import_table(src, writer, options, fmt=fmt, quiet=quiet)
    else:
        from melt.importers.nezha import import_nezha

        chosen = {**settings["nezha"], **{k: v for k, v in (nezha or {}).items() if v is not None}}
        provenance["nezha"] = chosen
        truth = import_nezha(src, writer, subset=chosen["subset"], fault_duration=chosen["fault_duration"],
                             service_regex=chosen["service_regex"], max_clock_skew=chosen["max_clock_skew"],
                             quiet=quiet)
        if not truth["faults"]:
            truth = None
    return writer.finish(truth, provenance)


__all__ = ["FORMATS", "BadRows", "BundleWriter", "ImportSummary", "import_source"]
