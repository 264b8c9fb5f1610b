"""Real HTTP servers on 127.0.0.1 for the tests: an OpenAI-compatible chat endpoint and a webhook receiver.

Each records what it received; the LLM answers from a script of steps, so a test says exactly what
the server does on each request.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server:
    def __init__(self, handle: Callable[[BaseHTTPRequestHandler, dict[str, Any]], None]) -> None:
        self.requests: list[dict[str, Any]] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                record = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                          "body": json.loads(body or b"null")}
                with lock:
                    outer.requests.append(record)
                handle(self, record)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _reply(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    try:
        handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
        pass


class FakeLLM(_Server):
    """Chat completions. Each step is ``("content", text)``, ``("status", code)`` or ``("sleep", seconds)``;
    the last step repeats. With ``json_schema=False`` the server answers HTTP 400 to a JSON-schema
    ``response_format``, as servers without structured output do."""

    def __init__(self, steps: list[tuple[str, Any]], json_schema: bool = True) -> None:
        self.steps = steps
        self.json_schema = json_schema
        self.calls = 0
        super().__init__(self._answer)

    def _answer(self, handler: BaseHTTPRequestHandler, record: dict[str, Any]) -> None:
        if not self.json_schema and record["body"].get("response_format", {}).get("type") == "json_schema":
            return _reply(handler, 400, {"error": {"message": "response_format json_schema unsupported"}})
        kind, value = self.steps[min(self.calls, len(self.steps) - 1)]
        self.calls += 1
        if kind == "status":
            return _reply(handler, value, {"error": {"message": "upstream failure"}})
        if kind == "sleep":
            time.sleep(value)
            kind, value = "content", "{}"
        _reply(handler, 200, {
            "id": f"chatcmpl-{self.calls}", "object": "chat.completion", "created": int(time.time()),
            "model": record["body"].get("model", "test"),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": value}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        })


class WebhookReceiver(_Server):
    """Accepts POSTs, failing the first ``fail_first`` with ``status``; ``down`` fails every one.
    Like a ticketing system, it opens one ticket per idempotency key."""

    def __init__(self, fail_first: int = 0, status: int = 503, key_header: str = "Idempotency-Key") -> None:
        self.fail_first, self.status, self.key_header = fail_first, status, key_header
        self.down = False
        self.tickets: dict[str, Any] = {}
        super().__init__(self._accept)

    def _accept(self, handler: BaseHTTPRequestHandler, record: dict[str, Any]) -> None:
        if self.down or len(self.requests) <= self.fail_first:
            return _reply(handler, self.status, {"error": "unavailable"})
        key = record["headers"].get(self.key_header.lower())
        created = key not in self.tickets
        self.tickets.setdefault(key, record["body"])
        _reply(handler, 201 if created else 200, {"ticket": key, "created": created})
