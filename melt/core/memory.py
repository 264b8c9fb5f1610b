"""Hand memory freed by a finished unit of work back to the operating system.

A long-running process that builds and drops large frames every minute (``melt serve``'s steps)
keeps the freed pages: glibc's malloc keeps them in its arenas, arrow's pool keeps them for reuse,
so the process's RSS climbs to its worst step and stays there, and grows as the heap fragments.
After each step the step process collects garbage, asks arrow's pool to release what it does not
use, and asks glibc to return free heap pages (``malloc_trim(0)``, as long-running Python services
such as Gunicorn workers are told to), so its RSS falls back between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from collections.abc import Callable

_LIBC: ctypes.CDLL | None = None


def release_memory() -> None:
    """Collect garbage and return free heap pages to the OS where the platform allows it."""
    gc.collect()
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except (ImportError, AttributeError):
        pass
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _malloc_trim() -> Callable[[int], int] | None:
    global _LIBC
    if not sys.platform.startswith("linux"):
        return None
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            return None
    return getattr(_LIBC, "malloc_trim", None)  # glibc only (not musl)
