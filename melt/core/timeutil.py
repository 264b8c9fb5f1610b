"""Parsing of human durations ("90s", "5m", "2h", "1d") used by the CLI and config."""

from __future__ import annotations

import re

import pandas as pd

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)\s*$")
_UNITS = {"ms": "ms", "s": "s", "m": "min", "min": "min", "h": "h", "d": "D"}


def parse_duration(text: str | int | float) -> pd.Timedelta:
    """Parse ``"5m"``-style durations; a bare number is seconds.

    Raises:
        ValueError: with a message that shows the accepted forms.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        return pd.Timedelta(seconds=float(text))
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration (use e.g. 30s, 5m, 2h, 1d)")
    value, unit = match.groups()
    delta = pd.Timedelta(float(value), unit=_UNITS[unit])
    if delta <= pd.Timedelta(0):
        raise ValueError(f"'{text}' must be positive")
    return delta


def format_duration(span: pd.Timedelta) -> str:
    """``1d``, ``2h``, ``10min``, ``90s``: a duration as a user writes it, in the largest unit that
    keeps it whole (the inverse of :func:`parse_duration`)."""
    seconds = span.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
