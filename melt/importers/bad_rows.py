"""Counting bad source rows: they are reported (the first few with their location), not silently
dropped, and they abort the import only in strict mode."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from melt.core.errors import SourceError


@dataclass
class BadRows:
    """Tally of rejected source rows.

    Args:
        strict: raise :class:`SourceError` at the first bad row instead of counting it.
        shown: how many examples to keep for the summary.
    """

    strict: bool = False
    shown: int = 5
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, where: str, reason: str, count: int = 1) -> None:
        """Record ``count`` bad rows found at ``where`` (``file:line``) for ``reason``."""
        if count <= 0:
            return
        if self.strict:
            raise SourceError(f"{where}: {_one_line(reason)} (strict import stops at the first bad row)")
        self.count += count
        if len(self.examples) < self.shown:
            self.examples.append(f"{where}: {_one_line(reason)}")

    def add_frame(self, source: str | pd.Series, lines: pd.Series, reasons: pd.Series) -> None:
        """Record the rows where ``reasons`` is set.

        ``source`` names the file of all rows, or of each row (a Series aligned with ``lines``);
        ``lines`` holds each row's line number in its file.
        """
        bad = reasons.notna().to_numpy()
        if not bad.any():
            return
        files = np.broadcast_to(np.asarray(source, dtype=object), bad.shape)[bad]
        bad_lines, bad_reasons = lines.to_numpy()[bad], reasons.to_numpy()[bad]
        for file, line, reason in zip(files[: self.shown], bad_lines[: self.shown], bad_reasons[: self.shown],
                                      strict=True):
            self.add(f"{file}:{line}", str(reason))
        self.count += int(bad.sum()) - min(int(bad.sum()), self.shown)

    def first(self, n: int = 3, width: int = 300) -> str:
        """The first ``n`` examples on one line (each cut to ``width`` characters), for an error message."""
        shown = [e if len(e) <= width else e[: width - 3] + "..." for e in self.examples[:n]]
        return "; ".join(shown)

    def summary(self) -> str:
        """One line per example, after a count; empty when nothing was bad."""
        if not self.count:
            return ""
        more = f" (first {len(self.examples)} shown)" if self.count > len(self.examples) else ""
        return "\n".join([f"{self.count} bad row(s) skipped{more}:", *(f"  {e}" for e in self.examples)])


def _one_line(text: str) -> str:
    """A reason on one line: bad-row examples are printed one per line and in one-line errors."""
    return " ".join(str(text).split())
