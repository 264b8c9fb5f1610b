"""Whether two runs' reports agree: what a Dask run is checked against (issue 29)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VOLATILE = frozenset({"generated_at"})  # when the report was written


def reports_in(directory: str | Path) -> dict[str, dict[str, Any]]:
    """The incident reports of one run's files sink, by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(Path(directory).glob("INC-*.json"))}


def differences(a: Any, b: Any, tolerance: float = 1e-6, path: str = "") -> list[str]:
    """Where ``a`` and ``b`` differ: keys, lengths, values; numbers within ``tolerance`` are equal
    (a value rounded to 6 places may then move by one in its last place)."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted((set(a) | set(b)) - VOLATILE):
            if key not in a or key not in b:
                found.append(f"{path}/{key}: only in {'the second' if key in b else 'the first'}")
            else:
                found.extend(differences(a[key], b[key], tolerance, f"{path}/{key}"))
        return found
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items against {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, tolerance, f"{path}[{i}]")]
    if a == b:  # before any reading as numbers: a span id "inf" is not a number to subtract
        return []
    numbers = (int, float)
    a, b = _number(a), _number(b)
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, numbers) and isinstance(b, numbers) and abs(a - b) <= tolerance + 1e-12:
            return []
    elif a == b:
        return []
    return [f"{path}: {str(a)[:80]!r} against {str(b)[:80]!r}"]


def _number(value: Any) -> Any:
    """A number written as text (an evidence ``value`` of ``"0.068858"``) as a float; the rest as it is."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def compare_runs(first: str | Path, second: str | Path, tolerance: float = 1e-6) -> list[str]:
    """Differences between two runs' report directories (empty: the same reports)."""
    a, b = reports_in(first), reports_in(second)
    if sorted(a) != sorted(b):
        return [f"incidents differ: {sorted(set(a) ^ set(b))[:5]}"]
    return [f"{name}{d}" for name in a for d in differences(a[name], b[name], tolerance)]
