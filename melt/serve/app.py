"""The `melt serve` HTTP application: the OTLP/HTTP receiver, the REST API, the incident page and
``/metrics``, on one port (docs/serve.md).

:func:`create_app` builds the FastAPI app (OpenAPI at ``/docs``) around four parts: the segment
store (:mod:`melt.serve.segments`), the state database (:mod:`melt.serve.state`), the runner that
scores each step (:mod:`melt.serve.runner`) and the metrics (:mod:`melt.serve.metrics`). Every
error is JSON ``{"error": "<one line>"}`` with its status code, never a traceback.
:func:`serve` is what ``melt serve`` runs: it checks the model and data directories and the port
first (a :class:`~melt.core.errors.MeltError` each, one line and exit 2 in the CLI), then runs
uvicorn until Ctrl-C or SIGTERM, after which the runner stops and the store and database close.
"""

from __future__ import annotations

import signal
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from melt.core.bundle import MeltBundle
from melt.core.errors import BundleError, ConfigError, MeltError, ReportError
from melt.core.progress import log
from melt.core.schema import SIGNALS
from melt.core.settings import Settings
from melt.core.version import __version__
from melt.serve.metrics import CONTENT_TYPE, ServeMetrics
from melt.serve.state import StateDB

PAGE_INCIDENTS = 500  # the most incidents the page lists
UPLOAD_SUFFIX = ".parquet"
PLOTLY_URL = "/static/plotly.min.js"


class Runner(Protocol):
    """What the app needs from the step runner (:class:`melt.serve.runner.Runner`)."""

    @property
    def alive(self) -> bool: ...

    @property
    def position(self) -> pd.Timestamp | None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def explain(self, incident_id: str) -> dict[str, Any]: ...

    def detect_bundle(self, bundle: MeltBundle) -> list[dict[str, Any]]: ...


class Store(Protocol):
    """What the app needs from the segment store (:class:`melt.serve.segments.SegmentStore`)."""

    @property
    def pending_bytes(self) -> int: ...

    def start(self) -> None: ...

    def close(self) -> None: ...


class ApiError(Exception):
    """An answer other than 2xx, with its one-line reason."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def error_response(status: int, message: object, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape of the whole app: ``{"error": "<one line>"}``."""
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


def assemble(settings: Settings, model_dir: str | Path, metrics: ServeMetrics,
             state: StateDB | None = None, store: Store | None = None, *,
             step_process: bool = False, quiet: bool = False) -> tuple[Runner, Store, StateDB]:
    """The production parts: the fitted models of ``model_dir``, the segment store and state database
    under ``serve.data_dir`` / ``serve.db``, and the runner that scores each step with them and
    delivers through ``serve.sinks`` (reports of the files sink in ``<data_dir>/reports``).

    With ``step_process`` (``melt serve``), the runner is a child process
    (:class:`melt.serve.worker.StepProcess`) that reads the segments this store writes; the store
    then keeps no index of them. Otherwise the runner is a thread of this process.

    Raises:
        BundleError | PluginError: the model directory is missing or holds a model that cannot load.
        ConfigError: the state database cannot be used.
    """
    from melt.serve.segments import SegmentStore

    serve = settings.serve
    state = state or StateDB(serve.db, serve.sinks)
    store = store or SegmentStore.of(serve, index_writes=not step_process)
    if step_process:
        from melt.serve.worker import StepProcess

        return StepProcess(settings, model_dir, state, metrics, quiet), store, state

    from melt.serve.runner import Runner as StepRunner

    return StepRunner.build(settings, model_dir, store, state, metrics, quiet=quiet), store, state


def create_app(settings: Settings, model_dir: str | Path, *, runner: Runner | None = None, store: Store | None = None,
               state: StateDB | None = None, metrics: ServeMetrics | None = None) -> FastAPI:
    """The FastAPI app of `melt serve`. Without ``runner``, the runner and the store and state not
    given are built from ``settings`` (:func:`assemble`); a given runner comes with its store and state.

    The app's lifespan starts the store's writer and the runner, and on shutdown stops the runner
    first (no step half done), then flushes and closes the store and closes the database.

    Raises:
        BundleError: ``model_dir`` is not a model directory from ``melt train``.
    """
    from melt.pipeline.fitting import model_names
    from melt.serve.ingest import ingest_router

    models = model_names(model_dir)
    metrics = metrics or ServeMetrics(settings.serve.step, settings.serve.lateness)
    if runner is None:
        runner, store, state = assemble(settings, model_dir, metrics, state, store)
    elif store is None or state is None:
        raise TypeError("create_app: a runner comes with the store and state it works on")
    parts = _Parts(settings, models, runner, store, state, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        parts.start()
        try:
            yield
        finally:
            parts.shutdown()

    app = FastAPI(title="melt serve", version=__version__, lifespan=lifespan,
                  description="OTLP/HTTP receiver, incidents and their reports, the incident page (docs/serve.md).")
    app.state.parts = parts
    _error_handlers(app)
    ingest = ingest_router(store, metrics)  # counts its own answers in melt_requests_total
    app.add_middleware(_RequestCounter, metrics=metrics,
                       counted_elsewhere={(path, "POST") for route in ingest.routes if (path := getattr(route, "path", None))})
    app.include_router(ingest)
    _api_routes(app, parts)
    _page_routes(app, parts)
    return app


class _Parts:
    """The app's parts and the one shutdown path."""

    def __init__(self, settings: Settings, models: list[str], runner: Runner, store: Store, state: StateDB,
                 metrics: ServeMetrics) -> None:
        self.settings, self.models, self.runner, self.store, self.state, self.metrics = (
            settings, models, runner, store, state, metrics)
        self.started = self.stopped = False

    def start(self) -> None:
        """Start the store's writer, then the runner; once (``melt serve`` starts them before
        uvicorn runs, so that a failure is one line, and the lifespan finds them started)."""
        if self.started:
            return
        self.started = True
        try:
            self.store.start()
            self.runner.start()
        except BaseException:
            self.shutdown()
            raise

    def shutdown(self) -> None:
        """Stop the runner (no step half done), then flush and close the store, then the database; once."""
        if self.stopped:
            return
        self.stopped = True
        try:
            self.runner.stop()
        finally:
            try:
                self.store.close()
            finally:
                self.state.close()

    def report(self, incident_id: str) -> dict[str, Any]:
        report = self.state.incident(incident_id)
        if report is None:
            raise ApiError(404, f"unknown incident '{incident_id}'")
        return _valid(report)


def _valid(report: dict[str, Any]) -> dict[str, Any]:
    from melt.reports.report import validate_report

    try:
        return validate_report(report)
    except ReportError as exc:
        raise ApiError(500, f"stored report does not validate: {exc}") from None


# ---------------------------------------------------------------------- errors and request counts
def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, exc.detail, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path"))
        return error_response(422, f"{where}: {first.get('msg')}" if where else first.get("msg"))

    @app.exception_handler(MeltError)
    async def melt_error(_: Request, exc: MeltError) -> JSONResponse:
        return error_response(422 if isinstance(exc, BundleError) else 400, exc)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        message = f"internal error: {type(exc).__name__}: {one_line(exc)}"
        log(f"{request.method} {request.url.path}: {message}", stage="melt serve")
        return error_response(500, message[:500])


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class _RequestCounter:
    """ASGI middleware: ``melt_requests_total{path,code}``, with the route template as the path (so
    incident ids do not each make a series) and ``unmatched`` for paths no route serves."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, counted_elsewhere: set[tuple[str, str]]) -> None:
        self.app = app
        self.metrics = metrics
        self.counted_elsewhere = counted_elsewhere  # (route path, method) whose handler counts itself

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            if (path, scope.get("method")) not in self.counted_elsewhere:
                self.metrics.request(path, status[0])


# ---------------------------------------------------------------------- the API
def _since(text: str | None) -> pd.Timestamp | None:
    if text is None:
        return None
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError) as exc:
        raise ApiError(422, f"since: {text!r} is not an ISO 8601 time ({exc})") from None
    if pd.isna(stamp):
        raise ApiError(422, f"since: {text!r} is not an ISO 8601 time")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _api_routes(app: FastAPI, parts: _Parts) -> None:
    state = parts.state

    @app.get("/api/incidents", tags=["incidents"], summary="Incidents, newest first")
    def list_incidents(
            open: bool | None = Query(None, description="true: open only; false: resolved only"),  # noqa: A002
            service: str | None = Query(None, description="only incidents that involve this service"),
            since: str | None = Query(None, description="ISO 8601 time: only incidents whose window ends at or after it"),
            limit: int | None = Query(None, ge=1, le=10_000, description="at most this many")) -> dict[str, Any]:
        rows = state.incidents(open=open, service=service, since=_since(since), limit=limit)
        position = state.position()
        return {"incidents": rows, "count": len(rows), "position": None if position is None else position.isoformat()}

    @app.get("/api/incidents/{incident_id}", tags=["incidents"],
             summary="The latest report of one incident (melt/core/schemas/report.schema.json)")
    def get_incident(incident_id: str) -> JSONResponse:
        report = parts.report(incident_id)
        summary = state.incident_summary(incident_id) or {}
        return JSONResponse(report, headers={"X-Melt-Incident-Version": str(summary.get("version", "")),
                                             "X-Melt-Incident-Status": str(summary.get("status", ""))})

    @app.get("/api/incidents/{incident_id}/versions", tags=["incidents"],
             summary="Every version of one incident's report, with its delivery state")
    def get_versions(incident_id: str) -> dict[str, Any]:
        versions = state.versions(incident_id)
        if not versions:
            raise ApiError(404, f"unknown incident '{incident_id}'")
        return {"incident_id": incident_id, "versions": versions}

    @app.post("/api/incidents/{incident_id}/explain", tags=["incidents"],
              summary="Explain one incident now (explain.provider; an LLM that fails falls back to the template)")
    def explain(incident_id: str) -> dict[str, Any]:
        parts.report(incident_id)
        try:
            report = parts.runner.explain(incident_id)
        except MeltError as exc:
            raise ApiError(502, f"explanation failed: {exc}") from None
        return _valid(report)

    @app.post("/api/detect", tags=["detect"],
              summary="Detect incidents in an uploaded bundle (the batch job as a service)")
    def detect(files: list[UploadFile] = File(  # noqa: B008 (FastAPI's way to declare a multipart field)
            ..., description="metrics.parquet, logs.parquet, traces.parquet and/or events.parquet")) -> dict[str, Any]:
        bundle = _uploaded_bundle(files)
        reports = parts.runner.detect_bundle(bundle)
        return {"reports": [_valid(r) for r in reports], "count": len(reports)}

    @app.get("/healthz", tags=["operations"], summary="The process is up")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["operations"],
             summary="Ready to ingest and detect: models loaded, store writable, runner alive (503 otherwise)")
    def readyz() -> JSONResponse:
        error = getattr(parts.runner, "error", None)
        checks = {"models": bool(parts.models), "store": _writable(parts.settings.serve.data_dir) and state.writable(),
                  "runner": bool(parts.runner.alive) and error is None}
        failing = [name for name, ok in checks.items() if not ok]
        if failing:
            why = {"models": "no models loaded", "store": f"{parts.settings.serve.data_dir} is not writable",
                   "runner": f"the step runner: {error}" if error else "the step runner is not running"}
            return JSONResponse({"error": "not ready: " + "; ".join(why[n] for n in failing), "checks": checks},
                                status_code=503)
        return JSONResponse({"status": "ready", "checks": checks})

    @app.get("/metrics", tags=["operations"], summary="Prometheus exposition (text format 0.0.4)")
    def prometheus() -> Response:
        parts.metrics.incidents_open(state.open_count())
        parts.metrics.pending(parts.store.pending_bytes)
        parts.metrics.received_until(getattr(parts.store, "newest_written", None))
        return Response(parts.metrics.exposition(), media_type=CONTENT_TYPE)


def _writable(directory: Path) -> bool:
    """Whether a file can be created in ``directory`` now (a real probe: ``os.access`` says yes to root)."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def _uploaded_bundle(files: list[UploadFile]) -> MeltBundle:
    """The uploaded parquet files as a bundle; each file's name says its frame (``traces.parquet``).

    Raises:
        ApiError: 422 for a name that is no frame, a frame given twice, or no file; 400 for a file
            that is not parquet or a frame that violates the bundle schema.
    """
    names: dict[str, UploadFile] = {}
    for upload in files:
        name = Path(upload.filename or "").name
        signal = name[:-len(UPLOAD_SUFFIX)] if name.endswith(UPLOAD_SUFFIX) else ""
        if signal not in SIGNALS:
            raise ApiError(422, f"files: {name or 'a file without a name'!s} is not one of "
                                f"{', '.join(s + UPLOAD_SUFFIX for s in SIGNALS)}")
        if signal in names:
            raise ApiError(422, f"files: {name} given twice")
        names[signal] = upload
    with tempfile.TemporaryDirectory(prefix="melt-upload-") as tmp:
        for signal, upload in names.items():
            with open(Path(tmp) / f"{signal}{UPLOAD_SUFFIX}", "wb") as out:
                while chunk := upload.file.read(1 << 20):
                    out.write(chunk)
        try:
            return MeltBundle.read(tmp)
        except BundleError as exc:
            raise ApiError(400, str(exc).replace(f"{tmp}/", "").replace(tmp, "upload")) from None


# ---------------------------------------------------------------------- the page
def plotly_js() -> Path:
    """plotly.js as the plotly package ships it, served from here: the page needs no CDN."""
    return Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))


def _page_routes(app: FastAPI, parts: _Parts) -> None:
    from melt.reports.page import render_incident, render_index

    @app.get("/", response_class=HTMLResponse, tags=["page"], summary="The incident list")
    def index() -> HTMLResponse:
        latest = parts.state.latest_reports(PAGE_INCIDENTS)
        return HTMLResponse(render_index([{**row["report"], "status": row["status"]} for row in latest],
                                         title="melt incidents", script_src=PLOTLY_URL,
                                         incident_href="/incidents/{id}", json_href="/api/incidents/{id}"))

    @app.get("/incidents/{incident_id}", response_class=HTMLResponse, tags=["page"], summary="One incident")
    def incident_page(incident_id: str) -> HTMLResponse:
        report = parts.report(incident_id)
        detail = parts.state.detail(incident_id) if hasattr(parts.state, "detail") else None
        return HTMLResponse(render_incident(report, detail, script_src=PLOTLY_URL, index_href="/",
                                            json_href="/api/incidents/{id}"))

    @app.get(PLOTLY_URL, tags=["page"], summary="plotly.js, for the page's charts (no CDN)")
    def plotly() -> FileResponse:
        return FileResponse(plotly_js(), media_type="application/javascript")


# ---------------------------------------------------------------------- `melt serve`
def check_data_dir(data_dir: Path) -> Path:
    """``data_dir``, created if missing, once a file could be written in it.

    Raises:
        ConfigError: it cannot be created or written.
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as exc:
        raise ConfigError(f"serve.data_dir: cannot write to {data_dir} ({exc.strerror or exc})") from None
    return data_dir


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, listening, before any model is loaded.

    Raises:
        ConfigError: the host does not resolve, or the port is in use or not allowed.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"serve.host: cannot resolve {host!r} ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, model_dir: str | Path, quiet: bool = False) -> None:
    """Run `melt serve` until Ctrl-C or SIGTERM: checks first, then uvicorn on the bound socket.

    SIGTERM stops it as Ctrl-C does: uvicorn finishes the requests in flight, the runner stops, the
    store flushes what it acknowledged and the database closes; then this returns.

    Raises:
        MeltError: a bad model directory, an unwritable data directory or database, a port in use,
            or a store or runner that fails to start; each one line.
    """
    import uvicorn

    from melt.pipeline.fitting import model_names

    serve_settings = settings.serve
    model_names(model_dir)
    check_data_dir(serve_settings.data_dir)
    sock = listen(serve_settings.host, serve_settings.port)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if in_main else None
    parts: _Parts | None = None
    try:
        metrics = ServeMetrics(serve_settings.step, serve_settings.lateness)
        runner, store, state = assemble(settings, model_dir, metrics, step_process=True, quiet=quiet)
        app = create_app(settings, model_dir, runner=runner, store=store, state=state, metrics=metrics)
        parts = app.state.parts
        parts.start()
        host, port = sock.getsockname()[:2]
        log(f"listening on http://{host}:{port}: OTLP/HTTP at /v1/traces, /v1/logs, /v1/metrics; API at /api "
            f"(/docs); page at /; data in {serve_settings.data_dir}", quiet, stage="melt serve")
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
        server.run(sockets=[sock])  # re-raises a caught SIGINT or SIGTERM (as KeyboardInterrupt) once stopped
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        if parts is not None:
            parts.shutdown()
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    log("stopped; state and segments are on disk", quiet, stage="melt serve")
