"""Vectorised string building for synthetic ids and log lines (no Python loop per row)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

_HEX = np.frombuffer(b"0123456789abcdef", dtype="S1")
_SHIFTS = np.arange(60, -4, -4, dtype=np.uint64)


def hex_ids(values: np.ndarray) -> np.ndarray:
    """16-hex-digit strings of uint64 values, built from nibble lookups."""
    nibbles = (values.astype(np.uint64)[:, None] >> _SHIFTS) & np.uint64(0xF)
    return _HEX[nibbles.astype(np.intp)].view("S16").ravel().astype(str)


def random_ids(rng: np.random.Generator, n: int, words: int = 1) -> np.ndarray:
    """``n`` random hex ids of ``16 * words`` characters."""
    parts = [hex_ids(rng.integers(0, np.iinfo(np.int64).max, n, dtype=np.int64)) for _ in range(words)]
    out = parts[0].astype(object)
    for part in parts[1:]:
        out = out + part.astype(object)
    return out.astype(str)


def render(template: str, **columns: np.ndarray | pd.Series) -> pd.Series:
    """Fill ``{name}`` placeholders of ``template`` from equal-length arrays, column-wise."""
    pieces = re.split(r"(\{\w+\})", template)
    length = len(next(iter(columns.values()))) if columns else 1
    out = pd.Series([""] * length, dtype=object)
    for piece in pieces:
        if not piece:
            continue
        if piece.startswith("{") and piece.endswith("}"):
            values = columns[piece[1:-1]]
            out = out + pd.Series(np.asarray(values)).astype(str).to_numpy(dtype=object)
        else:
            out = out + piece
    return out
