"""Importers: bring users' data into a melt bundle (``melt import FORMAT SRC --out BUNDLE``).

Formats: ``otlp`` (OpenTelemetry OTLP/JSON lines), ``jaeger`` (Jaeger JSON export), ``csv`` and
``parquet`` (generic tables with a column mapping) and ``nezha`` (the Nezha / TrainTicket layout).
Every importer streams its source in chunks through :class:`~melt.importers.writer.BundleWriter`,
which counts bad rows instead of failing, and writes a normal bundle that every melt command reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from melt.core.errors import SourceError
from melt.core.settings import Settings
from melt.core.timeutil import format_duration
from melt.importers.bad_rows import BadRows
from melt.importers.writer import BundleWriter, ImportSummary

FORMATS: tuple[str, ...] = ("otlp", "jaeger", "csv", "parquet", "nezha")


def import_source(fmt: str, src: str | Path, out: str | Path, settings: Settings, *,
                  table: Mapping[str, Any] | None = None, nezha: Mapping[str, Any] | None = None,
                  strict: bool = False, force: bool = False, quiet: bool = False,
                  encoding: str = "utf-8", partitioned: bool = False) -> ImportSummary:
    """Import ``src`` in format ``fmt`` into the bundle directory ``out``.

    Args:
        fmt: one of :data:`FORMATS`.
        src: a file or a directory of files.
        out: the bundle directory to write.
        settings: the run's settings; the ``import`` section gives the defaults.
        table: overrides of ``import.table`` (csv/parquet), in the config file's terms; checked as such.
        nezha: overrides of ``import.nezha``.
        strict: stop at the first bad row instead of counting it.
        force: replace an existing bundle at ``out``.
        quiet: no progress on stderr.
        encoding: csv: the files' text encoding (a Python codec name).
        partitioned: write each frame as hive partitions by date and service.

    Raises:
        SourceError: unknown format, unreadable source, a mapping that cannot work, or (strict) a bad row.
        ConfigError: an override that is not a valid setting.
    """
    if fmt not in FORMATS:
        raise SourceError(f"unknown import format {fmt!r} (known: {', '.join(FORMATS)})")
    overrides = {f"import.table.{k}": v for k, v in (table or {}).items()}
    overrides |= {f"import.nezha.{k}": v for k, v in (nezha or {}).items()}
    chosen = settings.with_overrides(overrides, "import option").imports if overrides else settings.imports
    bad_rows = BadRows(strict=strict, shown=chosen.bad_rows_shown)
    writer = BundleWriter(out, bad_rows, chunk_rows=chosen.chunk_rows, chunk_mib=chosen.chunk_mib, force=force,
                          quiet=quiet, partitioned=partitioned)
    try:
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

            options = TableOptions.from_settings(chosen.table, encoding)
            provenance["table"] = _plain(chosen.table)
            import_table(src, writer, options, fmt=fmt, quiet=quiet)
        else:
            from melt.importers.nezha import import_nezha

            provenance["nezha"] = _plain(chosen.nezha)
            truth = import_nezha(src, writer, chosen.nezha, quiet=quiet)
            if not truth["faults"]:
                truth = None
        return writer.finish(truth, provenance)
    except BaseException:
        writer.abort()  # no half-written bundle or parts directory left behind
        raise


def _plain(section: Any) -> dict[str, Any]:
    """A settings section as JSON values, for ``import.json``."""
    from dataclasses import fields

    def plain(value: Any) -> Any:
        if isinstance(value, re.Pattern):
            return value.pattern
        if isinstance(value, pd.Timedelta):
            return format_duration(value)
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {f.name: plain(getattr(section, f.name)) for f in fields(section)}


__all__ = ["FORMATS", "BadRows", "BundleWriter", "ImportSummary", "import_source"]
