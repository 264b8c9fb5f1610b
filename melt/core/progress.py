"""Progress lines on stderr, so stdout stays clean for data (reports, tables, JSON)."""

from __future__ import annotations

import sys


def log(message: str, quiet: bool = False, stage: str = "melt") -> None:
    """Print ``[stage] message`` on stderr unless ``quiet``."""
    if not quiet:
        print(f"[{stage}] {message}", file=sys.stderr, flush=True)
