"""Requests sent twice are stored once: the receiver's ledger of recent request keys.

An OTLP sender retries a request it got no answer for (a timeout, a dropped connection, a receiver
killed between its write and its answer) with the same body. Spans carry ids and are de-duplicated
when read, but log records and metric points have none, so a retried request would store them
twice. The receiver keys each request by a digest of its endpoint, encoding and raw body
(BLAKE2b, 128 bits) and remembers the keys it acknowledged for :data:`WINDOW`, longer than the
collector's and the SDKs' retry budgets (5 minutes and about a minute by default). A request whose
key is known is answered as the first one was, without storing anything; one that arrives while
the first is still being written waits for it and gets its answer.

The keys are durable with the rows: the segment store writes the keys of a group commit into the
metadata of the commit's last segment (``melt.requests``, :mod:`melt.serve.segments`), and a
restarting receiver reads them back from the segments written within the window, so a request
that was stored just before a crash and sent again after it is still stored once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from typing import Any

WINDOW = 600.0
"""Seconds a request key is remembered."""
MAX_KEYS = 200_000
"""Keys remembered at most (the oldest go first): 80 requests a second for ten minutes is 48,000."""
REQUESTS_KEY = b"melt.requests"
"""Parquet metadata key of the request keys a segment holds (written by :mod:`melt.serve.segments`)."""


def request_key(path: str, content_type: str, encoding: str | None, body: bytes) -> str:
    """The key of one request: its endpoint, media type, content encoding and raw body."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{path}\n{content_type}\n{encoding or ''}\n".encode())
    digest.update(body)
    return digest.hexdigest()


class RequestLedger:
    """The keys of the requests acknowledged in the last :data:`WINDOW` seconds, and those in flight.

    Args:
        known: keys stored before this process started, with their age in seconds (read back from
            the segments: the age of the file that holds them).
        window: seconds a key is remembered.
        max_keys: keys remembered at most.
    """

    def __init__(self, known: list[tuple[str, float]] | None = None, window: float = WINDOW,
                 max_keys: int = MAX_KEYS) -> None:
        self.window, self.max_keys = window, max_keys
        self._done: OrderedDict[str, tuple[float, Any]] = OrderedDict()  # key -> (when, the answer given)
        self._flight: dict[str, asyncio.Future[Any]] = {}
        now = time.monotonic()
        for key, age in sorted(known or [], key=lambda pair: -pair[1]):  # oldest first
            if age < window:
                self._done[key] = (now - age, None)
        self._prune()

    def __len__(self) -> int:
        return len(self._done)

    def answered(self, key: str) -> tuple[bool, Any]:
        """``(True, answer)`` for a key acknowledged within the window (``answer``, the encoded
        response, is ``None`` when it was acknowledged before a restart), else ``(False, None)``."""
        self._prune()
        if key in self._done:
            return True, self._done[key][1]
        return False, None

    def in_flight(self, key: str) -> asyncio.Future[Any] | None:
        """The pending outcome of the same request being written now, if there is one."""
        return self._flight.get(key)

    def begin(self, key: str) -> asyncio.Future[Any]:
        """Mark ``key`` as being written; its duplicates wait on the returned future."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._flight[key] = future
        return future

    def end(self, key: str, outcome: Any | None = None, answer: bytes | None = None,
            error: BaseException | None = None) -> None:
        """The request of ``key`` was acknowledged: its copies waiting now get ``outcome``, later
        ones are answered with ``answer`` (the encoded response: what is remembered stays small).
        Or it failed with ``error``: the waiting copies fail alike, and a later retry is stored."""
        future = self._flight.pop(key, None)
        if error is None:
            self._done[key] = (time.monotonic(), answer)
            self._done.move_to_end(key)
            self._prune()
        if future is not None and not future.done():
            if error is None:
                future.set_result(outcome)
            else:
                future.set_exception(error)
                future.exception()  # retrieved: no "never retrieved" warning when nobody waited

    def _prune(self) -> None:
        while len(self._done) > self.max_keys:
            self._done.popitem(last=False)
        cutoff = time.monotonic() - self.window
        while self._done:
            key, (when, _) = next(iter(self._done.items()))
            if when >= cutoff:
                return
            del self._done[key]
