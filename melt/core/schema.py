"""Column schemas of the four MELT frames (see docs/data-format.md).

Each frame is long format, one parquet file per signal, with UTC timestamps. ``validate_frame``
is called once, where data enters melt (bundle read, importers, generator), and coerces dtypes so
that every later stage can rely on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from melt.core.errors import BundleError

SIGNALS: tuple[str, ...] = ("metrics", "logs", "traces", "events")
PLAUSIBLE_TIMES = (pd.Timestamp("1990-01-01", tz="UTC"), pd.Timestamp("2200-01-01", tz="UTC"))
"""Times outside this range are clock or unit errors (epoch milliseconds read as seconds, a year 2256), not data."""
SERVICE_COLUMNS = ("service", "service_name")
EDGE_ARROW = " -> "
"""How the two ends of a call are written in a name: a call edge ``caller -> callee``, and a call
metric's series ``rpc.client.duration.p50 -> callee`` (the metric, then its ``peer``)."""
LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARN", "ERROR", "FATAL")
EVENT_KINDS: tuple[str, ...] = ("deploy", "config_change", "restart", "scale", "other")


@dataclass(frozen=True)
class FrameSchema:
    """Required and optional columns of one frame, with the kind each column is coerced to.

    Kinds: ``time`` (UTC datetime64[ns]), ``str``, ``float``, ``int``; ``prefix`` names optional
    free-form columns such as ``attr.*``.
    """

    name: str
    required: dict[str, str]
    optional: dict[str, str] = field(default_factory=dict)
    prefix: str | None = None
    nullable: frozenset[str] = frozenset()


SCHEMAS: dict[str, FrameSchema] = {
    "metrics": FrameSchema(
        "metrics",
        required={"timestamp": "time", "service": "str", "metric": "str", "value": "float"},
        optional={"instance": "str", "peer": "str", "label": "int"},
        nullable=frozenset({"value", "instance", "peer"}),
    ),
    "logs": FrameSchema(
        "logs",
        required={"timestamp": "time", "service": "str", "level": "str", "message": "str"},
        optional={"trace_id": "str", "span_id": "str", "instance": "str", "label": "int"},
        nullable=frozenset({"trace_id", "span_id", "instance"}),
    ),
    "traces": FrameSchema(
        "traces",
        required={
            "trace_id": "str",
            "span_id": "str",
            "parent_span_id": "str",
            "span_name": "str",
            "service_name": "str",
            "duration": "float",
        },
        optional={"start_time": "time", "status_code": "int", "span_kind": "str", "label": "int"},
        prefix="attr.",
        nullable=frozenset({"parent_span_id", "status_code", "span_kind"}),
    ),
    "events": FrameSchema(
        "events",
        required={"timestamp": "time", "service": "str", "kind": "str", "message": "str"},
        optional={"attributes": "str"},
        nullable=frozenset({"attributes"}),
    ),
}


def _fail(frame: str, column: str, problem: str) -> BundleError:
    return BundleError(f"{frame}: column '{column}' {problem}")


def epoch_unit(values: pd.Series) -> str:
    """Guess the unit of epoch numbers (s, ms, us, ns) from the magnitude of their median."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    magnitude = float(np.nanmedian(np.abs(numbers))) if np.isfinite(numbers).any() else 0.0
    return "s" if magnitude < 1e11 else "ms" if magnitude < 1e14 else "us" if magnitude < 1e17 else "ns"


def _coerce(series: pd.Series, kind: str, frame: str, column: str, errors: str = "raise") -> pd.Series:
    try:
        if kind == "time":
            if pd.api.types.is_numeric_dtype(series):
                return pd.to_datetime(series, unit=epoch_unit(series), utc=True, errors=errors).dt.as_unit("ns")
            return pd.to_datetime(series, utc=True, format="ISO8601", errors=errors).dt.as_unit("ns")
        if kind == "float":
            return pd.to_numeric(series, errors=errors).astype("float64")
        if kind == "int":
            numbers = pd.to_numeric(series, errors=errors)
            if errors == "coerce":
                numbers = numbers.where(numbers.isna() | (numbers == np.round(numbers)))
            return numbers.astype("Int64")
        if kind == "str":
            return series.astype("string")
    except (ValueError, TypeError, OverflowError) as exc:
        first = str(exc).splitlines()[0][:120]
        raise _fail(frame, column, f"cannot be read as {kind}: {first}") from None
    raise AssertionError(f"unknown column kind {kind}")


def validate_frame(name: str, df: pd.DataFrame, *, allow_empty: bool = False) -> pd.DataFrame:
    """Check ``df`` against the schema of frame ``name`` and return it with coerced dtypes.

    Raises:
        BundleError: one line naming the frame, the column and the problem.
    """
    if name not in SCHEMAS:
        raise BundleError(f"unknown frame '{name}' (known: {', '.join(SIGNALS)})")
    schema = SCHEMAS[name]
    if not isinstance(df, pd.DataFrame):
        raise BundleError(f"{name}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in schema.required if c not in df.columns]
    if missing:
        raise _fail(name, missing[0], f"is required but missing (have: {', '.join(map(str, df.columns[:12]))})")
    if len(df) == 0 and not allow_empty:
        raise BundleError(f"{name}: the frame is empty (0 rows)")
    out = df.copy()
    columns = {**schema.required, **schema.optional}
    for column, kind in columns.items():
        if column not in out.columns:
            continue
        if not _has_kind(out[column], kind):
            out[column] = _coerce(out[column], kind, name, column)
        if column not in schema.nullable and column in schema.required and out[column].isna().any():
            row = int(np.flatnonzero(out[column].isna().to_numpy())[0])
            raise _fail(name, column, f"has a null value (first at row {row})")
        _check_values(name, column, kind, out[column])
    if name == "metrics" and len(out) and out["value"].isna().all():
        raise _fail(name, "value", "holds no number at all (every value is null or NaN)")
    if schema.prefix:
        for column in out.columns:
            if column.startswith(schema.prefix) and out[column].dtype == object:
                out[column] = out[column].astype("string")
    if name == "traces":
        out = _check_traces(out)
    if name == "logs":
        out["level"] = normalise_levels(out["level"])
    return out.reset_index(drop=True)


def _check_values(name: str, column: str, kind: str, values: pd.Series) -> None:
    """A time outside :data:`PLAUSIBLE_TIMES` or an empty service name is an error, not data."""
    if kind == "time":
        bad = (values.notna() & ((values < PLAUSIBLE_TIMES[0]) | (values >= PLAUSIBLE_TIMES[1]))).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise _fail(name, column, f"has a time out of range ({values.iloc[row]} at row {row}; a clock or unit error?)")
    elif column in SERVICE_COLUMNS:
        empty = (values.astype("string").str.strip() == "").fillna(False).to_numpy(dtype=bool)
        if empty.any():
            raise _fail(name, column, f"is empty (first at row {int(np.flatnonzero(empty)[0])})")


def row_problems(name: str, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Coerce ``df`` leniently and say, per row, what is wrong with it (``<NA>`` for a good row).

    Importers use this to drop and report bad rows instead of rejecting a whole file; the good
    rows then pass :func:`validate_frame`. A row is bad when a required column is null (unless
    nullable) or a value cannot be read as its kind, or a span duration is negative.

    Raises:
        BundleError: a required column is missing altogether (that is a mapping error, not a bad row).
    """
    schema = SCHEMAS[name]
    missing = [c for c in schema.required if c not in df.columns]
    if missing:
        raise _fail(name, missing[0], f"is required but missing (have: {', '.join(map(str, df.columns[:12]))})")
    out = df.copy()
    masks: list[np.ndarray] = []
    reasons: list[str] = []
    for column, kind in {**schema.required, **schema.optional}.items():
        if column not in out.columns:
            continue
        source = out[column]
        coerced = source if _has_kind(source, kind) else _coerce(source, kind, name, column, errors="coerce")
        missing_now = coerced.isna().to_numpy()
        if coerced is not source:
            masks.append(missing_now & source.notna().to_numpy())
            reasons.append(f"column '{column}' cannot be read as {kind}")
        if column in schema.required and column not in schema.nullable:
            masks.append(missing_now)
            reasons.append(f"column '{column}' is null")
        out[column] = coerced
    if name == "traces":
        masks.append((out["duration"] < 0).fillna(False).to_numpy(dtype=bool))
        reasons.append("column 'duration' is negative")
    for column in SERVICE_COLUMNS:
        if column in out.columns:
            masks.append((out[column].astype("string").str.strip() == "").fillna(False).to_numpy(dtype=bool))
            reasons.append(f"column '{column}' is empty")
    problems = np.select(masks, reasons, default=None) if masks else np.full(len(out), None)
    return out, pd.Series(problems, index=out.index, dtype="string")


def _has_kind(series: pd.Series, kind: str) -> bool:
    """Whether ``series`` already has the dtype :func:`_coerce` would give it (coercing again is wasted work)."""
    dtype = series.dtype
    if kind == "time":
        return isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) == "UTC" and dtype.unit == "ns"
    if kind == "float":
        return dtype == np.float64
    if kind == "int":
        return str(dtype) == "Int64"
    return dtype == pd.StringDtype()  # the "string" dtype astype("string") gives, not pandas' NaN-based "str"


def normalise_levels(levels: pd.Series) -> pd.Series:
    """Map level spellings (warning, Err, E, ...) onto :data:`LOG_LEVELS`, vectorised."""
    upper = levels.astype("string").str.upper().str.strip()
    mapping = {"WARNING": "WARN", "ERR": "ERROR", "CRITICAL": "FATAL", "TRACE": "DEBUG", "E": "ERROR",
               "W": "WARN", "I": "INFO", "D": "DEBUG", "F": "FATAL", "SEVERE": "ERROR", "NOTICE": "INFO"}
    return upper.replace(mapping).astype("string")


def _check_traces(df: pd.DataFrame) -> pd.DataFrame:
    """Normalise root markers and reject negative durations and duplicate span ids."""
    parent = df["parent_span_id"]
    roots = parent.isna() | parent.isin(["", "root", "0", "None", "null"])
    df["parent_span_id"] = parent.mask(roots, pd.NA)
    if (df["duration"] < 0).any():
        row = int(np.flatnonzero((df["duration"] < 0).to_numpy())[0])
        raise _fail("traces", "duration", f"is negative (first at row {row}); durations are milliseconds")
    duplicated = df.duplicated(["trace_id", "span_id"])
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise _fail("traces", "span_id", f"is duplicated within a trace (first at row {row})")
    return df
