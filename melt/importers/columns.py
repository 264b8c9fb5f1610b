"""Vectorised column conversions shared by the importers: times, durations, service names, levels.

Each converter returns the converted column; :func:`unreadable` says which source values failed,
so the importer can report them as bad rows with the reason.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from melt.core.errors import SourceError
from melt.core.schema import epoch_unit

TIME_UNITS = ("auto", "s", "ms", "us", "ns")
DURATION_UNITS: dict[str, float] = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
POD_SUFFIX = r"^(?P<service>.+)-[^-]+-[^-]+$"
"""A Kubernetes Deployment pod name is ``<deployment>-<replicaset hash>-<pod hash>``."""

WIDE_ID_COLUMNS = ("timestamp", "service", "instance")

_LEVEL_PREFIX = (r"^\s*(?:[\d\-/:.,T]+(?:Z|[+-]\d{2}:?\d{2})?\s+)*\[?"
                 r"(?P<level>TRACE|DEBUG|INFO|WARN|WARNING|ERROR|FATAL|CRITICAL)\]?\s+")
_LEVEL_WORD = r"\b(?P<word>TRACE|DEBUG|INFO|WARN|WARNING|ERROR|FATAL|CRITICAL)\b"
"""RE2 patterns (run by pyarrow over a whole column)."""


NS_RANGE = (pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC"))
"""What a nanosecond timestamp can hold: 1677-09-21 to 2262-04-11."""
_NS_PER_UNIT = {"s": 1e9, "ms": 1e6, "us": 1e3, "ns": 1.0}
_NS_LIMIT = 9.2e18
"""Just under 2**63 ns: epoch numbers beyond it (in their unit) are out of range, not converted."""


def to_utc(values: pd.Series, unit: str = "auto") -> pd.Series:
    """Epoch numbers (in ``unit``, or guessed from their magnitude) or ISO-8601 strings to UTC ns.

    Unreadable values, and times a nanosecond timestamp cannot hold (before 1677 or after 2262,
    e.g. epoch milliseconds read as seconds), become ``NaT``; :func:`time_problems` says which is
    which. Bad values never raise: pandas' ``OutOfBoundsDatetime`` is avoided, not caught.
    """
    if unit not in TIME_UNITS:
        raise ValueError(f"time unit must be one of {', '.join(TIME_UNITS)}, got {unit!r}")
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = pd.to_datetime(values, utc=True)
        return pd.Series(_naive_ns(stamps), index=values.index).dt.tz_localize("UTC")
    out = np.full(len(values), np.datetime64("NaT", "ns"))
    numbers = pd.to_numeric(values, errors="coerce")
    numeric = numbers.notna().to_numpy()
    if numeric.any():
        chosen = epoch_unit(numbers[numeric]) if unit == "auto" else unit
        magnitude = np.abs(numbers.to_numpy(dtype=float, na_value=np.nan))
        fits = np.flatnonzero(numeric & (magnitude * _NS_PER_UNIT[chosen] < _NS_LIMIT))
        if len(fits):
            out[fits] = _naive_ns(pd.to_datetime(numbers.iloc[fits], unit=chosen, utc=True, errors="coerce"))
    text = np.flatnonzero(~numeric & values.notna().to_numpy())
    if len(text):
        out[text] = _naive_ns(_parse_iso(values.iloc[text]))
    return pd.Series(out, index=values.index).dt.tz_localize("UTC")


def _parse_iso(values: pd.Series) -> pd.Series:
    """ISO-8601 text to UTC datetimes in whatever unit pandas picks; unreadable text is ``NaT``."""
    try:
        return pd.to_datetime(values.astype("string"), utc=True, format="ISO8601", errors="coerce")
    except (ValueError, TypeError, OverflowError):  # defensive: errors="coerce" should not raise
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")


def _naive_ns(stamps: pd.Series) -> np.ndarray:
    """UTC datetimes as naive ``datetime64[ns]``; those a nanosecond timestamp cannot hold become ``NaT``."""
    if stamps.dt.unit != "ns":
        stamps = stamps.mask(stamps.notna() & ((stamps < NS_RANGE[0]) | (stamps > NS_RANGE[1])))
    return stamps.dt.tz_convert(None).dt.as_unit("ns").to_numpy()


def time_problems(raw: pd.Series, converted: pd.Series, column: str, unit: str, hint: str = "") -> pd.Series:
    """Per row, why a present ``raw`` time did not convert (``<NA>`` where it did, or was absent).

    An epoch number or date that a nanosecond timestamp cannot hold is "out of range" (with
    ``hint``, e.g. a pointer to ``--time-unit``); anything else is "not a time".
    """
    failed = unreadable(raw, converted)
    reasons = pd.Series(pd.NA, index=converted.index, dtype="string")
    if not failed.any():
        return reasons
    if pd.api.types.is_datetime64_any_dtype(raw):
        return reasons.mask(failed, f"'{column}' is out of range (a time must lie between 1677 and 2262)")
    numbers = pd.to_numeric(raw, errors="coerce")
    numeric = numbers.notna().to_numpy()
    chosen = epoch_unit(numbers[numeric]) if unit == "auto" and numeric.any() else unit
    dated = np.zeros(len(raw), dtype=bool)
    text = np.flatnonzero(failed & ~numeric)
    if len(text):
        dated[text] = _parse_iso(raw.iloc[text]).notna().to_numpy()
    reasons = reasons.mask(failed & numeric, f"'{column}' is out of range as epoch {chosen} "
                                             f"(a time must lie between 1677 and 2262{hint})")
    reasons = reasons.mask(failed & dated, f"'{column}' is out of range (a time must lie between 1677 and 2262)")
    return reasons.mask(failed & ~numeric & ~dated, f"'{column}' is not a time")


def duration_ms(values: pd.Series, unit: str) -> pd.Series:
    """Durations in ``unit`` (ns, us, ms or s) to float milliseconds; unreadable values become NaN."""
    if unit not in DURATION_UNITS:
        raise ValueError(f"duration unit must be one of {', '.join(DURATION_UNITS)}, got {unit!r}")
    return pd.to_numeric(values, errors="coerce").astype("float64") * DURATION_UNITS[unit]


def service_names(values: pd.Series, pattern: re.Pattern[str] | str | None = POD_SUFFIX) -> pd.Series:
    """Derive service names with ``pattern`` (its group ``service``, or its first group).

    Values the pattern does not match are kept as they are, so already-clean names pass through.
    The pattern runs once per distinct value (pods are few, rows are many).
    """
    values = values.astype("string")
    if not pattern:
        return values
    compiled = re.compile(pattern)
    if compiled.groups == 0:
        raise ValueError(f"service regex {pattern!r} needs a group, e.g. (?P<service>...)")
    codes, uniques = pd.factorize(values)
    distinct = pd.Series(uniques, dtype="string")
    found = distinct.str.extract(compiled, expand=True)
    found = found["service"] if "service" in compiled.groupindex else found[0]
    names = found.fillna(distinct).to_numpy(dtype=object)
    out = np.where(codes >= 0, names[np.maximum(codes, 0)], None)
    return pd.Series(out, index=values.index, dtype="string")


def split_level(lines: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Split ``"16:42:22.382 INFO  text"``-style lines into level and message (RE2 over the column).

    Lines without a leading level keep their text; their level is the first level word found in
    them, else INFO.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    lines = lines.astype("string")
    text = pa.array(lines.fillna(""), type=pa.string())
    prefixed = pc.struct_field(pc.extract_regex(text, _LEVEL_PREFIX), "level")
    anywhere = pc.struct_field(pc.extract_regex(text, _LEVEL_WORD), "word")
    level = pc.coalesce(prefixed, anywhere, pa.scalar("INFO"))
    # the prefix is removed by a second RE2 pass: capturing the rest with (?s).* is ten times slower
    message = pc.replace_substring_regex(text, pattern=_LEVEL_PREFIX, replacement="", max_replacements=1)
    message = pc.utf8_rtrim(message, characters="\n")
    return _series(level, lines.index), _series(message, lines.index).mask(lines.isna())


def _series(array: object, index: pd.Index) -> pd.Series:
    return pd.Series(array.to_pandas(), index=index, dtype="string")  # type: ignore[attr-defined]


def unreadable(raw: pd.Series, converted: pd.Series) -> np.ndarray:
    """True where a source value was present but did not convert."""
    return (converted.isna() & raw.notna()).to_numpy()


def numbers(values: pd.Series) -> np.ndarray:
    """A column as float64; cells that are not numbers become NaN (pyarrow's cast first, pandas if it fails)."""
    import pyarrow as pa

    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=float, na_value=np.nan)
    try:
        return pa.array(values.astype("string"), type=pa.string()).cast(pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def note_problems(problems: pd.Series, mask: np.ndarray, reason: str) -> pd.Series:
    """Set ``reason`` on the rows of ``mask`` that have no problem yet."""
    return problems.mask(problems.isna().to_numpy() & mask, reason)


def wide_to_long(frame: pd.DataFrame, lines: pd.Series, source: str) -> tuple[pd.DataFrame, pd.Series]:
    """One column per metric -> one row per (row, metric); non-numeric cells become gaps (null)."""
    ids = [c for c in WIDE_ID_COLUMNS if c in frame.columns]
    metrics = [c for c in frame.columns if c not in ids]
    if not metrics:
        raise SourceError(f"{source}: --wide needs at least one metric column besides {', '.join(ids)}")
    values = np.column_stack([numbers(frame[c]) for c in metrics])
    long = pd.DataFrame({c: np.repeat(frame[c].to_numpy(), len(metrics)) for c in ids})
    long["metric"] = np.tile(np.asarray(metrics, dtype=object), len(frame))
    long["value"] = values.ravel()
    return long, pd.Series(np.repeat(lines.to_numpy(), len(metrics)))
