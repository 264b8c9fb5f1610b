"""The OTLP/HTTP receiver: ``POST /v1/traces``, ``/v1/logs`` and ``/v1/metrics``.

As the OTLP/HTTP specification asks: the body is protobuf or JSON, maybe gzip; the answer is the
``Export*ServiceResponse`` in the request's encoding (``partial_success`` for rejected items),
sent only once the rows are in a segment on disk (:class:`~melt.serve.segments.SegmentStore`).
A full store answers 429 with ``Retry-After`` (retryable: the SDKs and the collector wait and send
again, so nothing is dropped); a failed write answers 503 with ``Retry-After``; a body that is not
a request 400, one too large 413, an unknown content type or encoding 415 (not retryable).

Requests are decoded in one worker thread, in batches: whatever arrived while the previous batch
was being decoded is decoded together (the checks cost pandas a fixed overhead per call), and the
event loop stays free for other requests meanwhile.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from melt.serve.dedup import WINDOW as DEDUP_WINDOW
from melt.serve.dedup import RequestLedger, request_key
from melt.serve.otlp_http import (
    ENDPOINTS,
    JSON,
    Batch,
    BodyError,
    Decoded,
    OtlpDecoder,
    export_response,
    inflate,
    media_type,
    status_body,
)
from melt.serve.segments import Backpressure, SegmentStore

MAX_BODY_BYTES = 64 * 2**20
"""Largest body taken, before and after gzip (the collector's own OTLP/HTTP receiver has no lower default)."""
MAX_BATCH = 64
"""Requests decoded together at most."""
MAX_WAITING_BYTES = 256 * 2**20
"""Bodies received but not yet decoded, at most; above it senders are told to retry later (429)."""


@dataclass
class _Waiting:
    signal: str
    body: bytes
    content_type: str
    answer: asyncio.Future[Decoded]
    key: str = ""


class _Pipeline:
    """Decodes waiting requests in batches, hands their rows to the store, answers each once written."""

    def __init__(self, store: SegmentStore) -> None:
        self.store = store
        self.decoder = OtlpDecoder()
        self.waiting: list[_Waiting] = []
        self.waiting_bytes = 0
        self.running = False
        self.tasks: set[asyncio.Task[None]] = set()

    async def take(self, signal: str, body: bytes, content_type: str, key: str = "") -> Decoded:
        """Decode and store one request; its result once its rows are on disk.

        Raises:
            BodyError: the body is not a request of this endpoint.
            Backpressure: the store is full.
            Exception: the segment could not be written.
        """
        if self.waiting_bytes + len(body) > MAX_WAITING_BYTES and self.waiting:
            raise Backpressure(1.0, f"{len(self.waiting)} requests ({self.waiting_bytes / 2**20:.0f} MiB) wait to be decoded")
        answer: asyncio.Future[Decoded] = asyncio.get_running_loop().create_future()
        self.waiting.append(_Waiting(signal, body, content_type, answer, key))
        self.waiting_bytes += len(body)
        if not self.running:
            self.running = True
            self._spawn(self._drain())
        return await answer

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _drain(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting[:MAX_BATCH], self.waiting[MAX_BATCH:]
                self.waiting_bytes -= sum(len(item.body) for item in batch)
                try:
                    decoded, written = await run_in_threadpool(self._decode_and_submit, batch)
                except Exception as exc:  # Backpressure, or a bug: every request of the batch gets it
                    for item in batch:
                        _settle(item.answer, exc)
                    continue
                self._spawn(self._answer(batch, decoded, written))
        finally:
            self.running = False

    def _decode_and_submit(self, batch: list[_Waiting]) -> tuple[Batch, Any]:
        decoded = self.decoder.decode_batch([(item.signal, item.body, item.content_type) for item in batch])
        keys = [item.key for item, result in zip(batch, decoded.results, strict=True)
                if item.key and not isinstance(result, BodyError)]
        written = self.store.submit(decoded.frames, keys)
        self.decoder.commit(decoded)
        return decoded, written

    async def _answer(self, batch: list[_Waiting], decoded: Batch, written: Any) -> None:
        failure: BaseException | None = None
        try:
            await asyncio.wrap_future(written)
        except Exception as exc:
            failure = exc
        for item, result in zip(batch, decoded.results, strict=True):
            _settle(item.answer, result if isinstance(result, BodyError) else failure or result)


def _settle(answer: asyncio.Future[Decoded], outcome: Decoded | BaseException) -> None:
    if answer.done():  # the client went away and its handler was cancelled
        return
    if isinstance(outcome, BaseException):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)


def ingest_router(store: SegmentStore, metrics: object | None = None, *,
                  max_body_bytes: int = MAX_BODY_BYTES) -> APIRouter:
    """The three OTLP/HTTP endpoints, writing into ``store`` (started by the caller).

    ``metrics``, when given, is told ``received(signal, rows)`` and ``rejected(signal, rows)`` per
    melt signal (traces, logs, metrics; a span's events are log rows) and ``request(path, code)``
    per answer.
    """
    pipeline = _Pipeline(store)
    ledger = RequestLedger(store.recent_request_keys(DEDUP_WINDOW) if hasattr(store, "recent_request_keys") else [])
    storing: set[asyncio.Task[None]] = set()
    router = APIRouter(tags=["OTLP/HTTP"])

    async def store_once(signal: str, key: str, body: bytes, encoding: str | None, kind: str) -> None:
        """Inflate, decode and store one request; its outcome goes to the ledger, where the request
        and any copy of it sent meanwhile wait (a client that goes away does not stop the write)."""
        try:
            body = await run_in_threadpool(inflate, body, encoding, max_body_bytes)
            store.check_capacity()
            decoded = await pipeline.take(signal, body, kind, key)
        except asyncio.CancelledError as exc:  # the server is stopping: the waiting requests end too
            ledger.end(key, error=exc)
            raise
        except Exception as exc:  # noqa: BLE001 (every outcome is handed to the waiting requests)
            ledger.end(key, error=exc)
        else:
            encoded = export_response(signal, decoded, kind)
            ledger.end(key, (decoded, encoded), encoded)

    def endpoint(signal: str) -> Any:
        path = ENDPOINTS[signal].path

        async def receive(request: Request) -> Response:
            kind = JSON  # a 415 is answered in JSON: the sender's encoding is unknown
            try:
                kind = media_type(request.headers.get("content-type"))
                body = await _body(request, max_body_bytes)
                encoding = request.headers.get("content-encoding")
                key = request_key(path, kind, encoding, body)
                known, answer = ledger.answered(key)
                if known:  # sent again after it was stored: answered as before, stored once
                    if metrics is not None:
                        metrics.duplicate(path)  # type: ignore[attr-defined]
                        metrics.request(path, 200)  # type: ignore[attr-defined]
                    return Response(answer or export_response(signal, Decoded(), kind), media_type=kind)
                outcome = ledger.in_flight(key)
                duplicate = outcome is not None
                if outcome is None:
                    outcome = ledger.begin(key)
                    task = asyncio.get_running_loop().create_task(store_once(signal, key, body, encoding, kind))
                    storing.add(task)
                    task.add_done_callback(storing.discard)
                decoded, encoded = await asyncio.shield(outcome)
            except BodyError as exc:
                return _failure(metrics, path, exc.status, exc.message, kind)
            except Backpressure as exc:
                return _failure(metrics, path, 429, f"busy, retry later: {exc}", kind, exc.retry_after)
            except Exception as exc:  # the segment write failed: retryable, nothing was acknowledged
                return _failure(metrics, path, 503, f"could not store the data: {type(exc).__name__}: {exc}", kind,
                                store.retry_after())
            if metrics is not None:
                if duplicate:
                    metrics.duplicate(path)  # type: ignore[attr-defined]
                else:
                    for name, rows in decoded.rows.items():
                        metrics.received(name, rows)  # type: ignore[attr-defined]
                    for name, rows in decoded.rejected_rows.items():
                        metrics.rejected(name, rows)  # type: ignore[attr-defined]
                metrics.request(path, 200)  # type: ignore[attr-defined]
            return Response(encoded, media_type=kind)

        receive.__name__ = f"export_{signal}"
        receive.__doc__ = (f"OTLP/HTTP export of {signal} (protobuf or JSON, gzip allowed); answered once "
                           "the rows are on disk. 429/503 with Retry-After: retry later.")
        return receive

    for signal in ENDPOINTS:
        router.add_api_route(ENDPOINTS[signal].path, endpoint(signal), methods=["POST"],
                             response_class=Response, summary=f"Receive OTLP {signal}")
    return router


async def _body(request: Request, limit: int) -> bytes:
    """The raw body, refused (413) as soon as it is known to exceed ``limit``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyError(413, f"the body is {int(declared):,} bytes, over the limit of {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(413, f"the body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _failure(metrics: object | None, path: str, status: int, message: str, kind: str,
             retry_after: float | None = None) -> Response:
    body, media = status_body(status, message, kind)
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    if metrics is not None:
        metrics.request(path, status)  # type: ignore[attr-defined]
    return Response(body, status_code=status, media_type=media, headers=headers)


__all__ = ["ingest_router", "MAX_BODY_BYTES"]
