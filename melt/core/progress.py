"""Progress on stderr, so stdout stays clean for data (reports, tables, JSON): one line per step
(:func:`log`), and a tqdm bar over long work when stderr is a terminal (:func:`progress` over a
loop, :class:`Steps` over the named steps of a computation that is not one loop)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
_open_bars = 0  # while a bar is drawn, lines go through tqdm.write so the bar is redrawn below them


def log(message: str, quiet: bool = False, stage: str = "melt") -> None:
    """Print ``[stage] message`` on stderr unless ``quiet``."""
    if quiet:
        return
    if _open_bars:
        from tqdm.auto import tqdm

        tqdm.write(f"[{stage}] {message}", file=sys.stderr)
    else:
        print(f"[{stage}] {message}", file=sys.stderr, flush=True)


def _bar(description: str, quiet: bool, total: int | None) -> Any | None:
    """A tqdm bar on stderr, or None off the terminal (CI, a pipe, a log file) or when ``quiet``:
    there the :func:`log` lines say what happened."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(desc=f"[melt] {description}", total=total, file=sys.stderr, leave=False, dynamic_ncols=True)


def progress(items: Iterable[T], description: str, quiet: bool = False, total: int | None = None) -> Iterator[T]:
    """``items``, with a bar on stderr while it runs (when stderr is a terminal and not ``quiet``)."""
    global _open_bars
    bar = _bar(description, quiet, total)
    if bar is None:
        yield from items
        return
    _open_bars += 1
    try:
        for item in items:
            yield item
            bar.update()
    finally:
        _open_bars -= 1
        bar.close()


class Steps:
    """A bar over the ``total`` named steps of one computation (``melt generate``: requests, spans,
    logs, metrics...); ``step(label)`` marks one done. Used as a context manager."""

    def __init__(self, total: int, description: str, quiet: bool = False) -> None:
        self._bar = _bar(description, quiet, total)

    def __call__(self, label: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update()

    def __enter__(self) -> Steps:
        global _open_bars
        _open_bars += self._bar is not None
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        global _open_bars
        if self._bar is not None:
            _open_bars -= 1
            self._bar.close()
