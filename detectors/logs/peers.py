"""The other service a log line names: "Slow call to payment-service", "No instances available for ts-basic-service".

A caller's complaint about a dependency is evidence about that dependency. Drain, though, turns the
name into a wildcard as soon as two callees share a message ("Slow call to <*>"), and the complaint
is then only a burst in the caller. The log detectors therefore key each template by the peer its
lines name as well, so slow calls to payment-service and slow calls to cart-service are separate
patterns, and the evidence carries the name for the root-cause ranking (:mod:`rca.attribution`).
Entity extraction from logs in the manner of log-based RCA with knowledge of the system's entities
(e.g. LogKG, Sui et al., 2023), with the service names taken from the data itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

PEER_MARK = "\x1f"  # between a template label and the peer its lines name; never in a log template


def known_services(logs: pd.DataFrame, traces: pd.DataFrame | None = None) -> list[str]:
    """Every service that logs or has spans: the names a line may mention."""
    names = set(logs["service"].dropna().astype(str)) if "service" in logs.columns else set()
    if traces is not None and "service_name" in traces.columns:
        names |= set(traces["service_name"].dropna().astype(str))
    return sorted(n for n in names if n)


def named_peers(messages: pd.Series, own: pd.Series, services: Iterable[str]) -> np.ndarray:
    """Per line, the first known service it names other than its own, or ``""``.

    Longer names are tried first, so ``ts-inside-payment-service`` is not read as
    ``payment-service``; a name must stand as a whole word (no letter, digit, ``-`` or ``_`` around it).
    """
    names = sorted(set(services), key=len, reverse=True)
    if not names or messages.empty:
        return np.full(len(messages), "", dtype=object)
    pattern = r"(?:^|[^\w-])(" + "|".join(re.escape(n) for n in names) + r")(?:$|[^\w-])"
    text = messages.astype("string[pyarrow]")
    codes, distinct = pd.factorize(text, use_na_sentinel=False)  # log lines repeat: match each text once
    found = pd.Series(distinct, dtype="string[pyarrow]").str.extract(pattern, expand=False)
    peer = found.fillna("").astype(object).to_numpy()[codes]
    return np.where(peer == own.astype(str).to_numpy(), "", peer)


def with_peer(labels: np.ndarray, peers: np.ndarray) -> np.ndarray:
    """Template labels keyed by the peer their line names as well (unchanged where it names none)."""
    labels = np.asarray(labels, dtype=object)
    return np.where(peers != "", labels + PEER_MARK + peers.astype(object), labels)


def label_peers(labels: np.ndarray, logs: pd.DataFrame, traces: pd.DataFrame | None,
                trained: Iterable[str]) -> np.ndarray:
    """``labels`` keyed by the peer each line of ``logs`` names, among the ``trained`` services and
    those in this data."""
    services = set(trained) | set(known_services(logs, traces))
    return with_peer(labels, named_peers(logs["message"], logs["service"], services))


def split_peer(label: str) -> tuple[str, str | None]:
    """A label's template part and the peer it names (``None`` when it names none)."""
    template, _, peer = label.partition(PEER_MARK)
    return template, peer or None


def describe(label: str, text_of: dict[str, str]) -> str:
    """Readable text of a label: the template (``text_of`` maps ids; ``new:`` labels carry theirs), then ``[peer]``."""
    template, peer = split_peer(label)
    text = text_of.get(template, template[4:] if template.startswith("new:") else template)
    return f"{text} [{peer}]" if peer else text
