"""The HTTP application: the routes (``service.routes``: health, match, gallery), the middleware that logs,
limits and guards every request, and the error handlers.

``create_app(settings)`` builds an app; the module-level ``app`` reads its
settings from the environment (and ``$SHOPMATCH_CONFIG_FILE``) for
``uvicorn service.app:app``. Models load at start-up; ``/readyz`` turns 200
once they are loaded and the gallery is readable (its reasons, models and
gallery counts are at ``/v1/status``, behind the API key when one is set).
Answers show paths relative to their data root, never server paths.
"""
from __future__ import annotations

import hmac
import json
import logging
import math
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.batcher import Overloaded
from service.errors import error_response, install_handlers
from service.gallery import GalleryReadOnly, GalleryUnavailable
from service.logs import ACCESS, ensure_access_log
from service.routes import PUBLIC_PATHS, routers
from service.settings import Settings, load_settings
from service.state import Service
from service.uploads import BodyLimit

log = logging.getLogger(ACCESS)

LOGGED_CHARS = 200
"""Longest client string (a URL path, an exception message) copied into a log line."""


def _log_failure(request_id: str, scope: Scope, exc: Exception) -> None:
    """An unexpected exception, logged with its request id and stack but only the start of its message: a
    message may quote a client's input (a path of megabytes)."""
    stack = "".join(traceback.format_tb(exc.__traceback__))
    log.error(json.dumps({"ts": round(time.time(), 3), "level": "error", "event": "failure",
                          "request_id": request_id, "method": scope["method"], "path": scope["path"][:LOGGED_CHARS],
                          "exception": type(exc).__name__, "message": str(exc)[:LOGGED_CHARS],
                          "stack": stack[-4000:]}))


class RequestLog:
    """Outermost middleware: one JSON log line and the request metrics per request, a request id header.

    It is also the last resort: an exception nothing else handled becomes a 500 in the error shape naming
    the request id, logged once here (bounded) and not re-raised to the server's own logging.
    """

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = uuid.uuid4().hex[:16]
        status = 500
        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # the last resort: see the class docstring
            scope.setdefault("state", {})["error_code"] = "internal_error"
            _log_failure(request_id, scope, exc)
            if not responded:
                await error_response(500, "internal_error", f"internal error; request id {request_id}")(
                    scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            code = (scope.get("state") or {}).get("error_code")
            metrics = self.service.metrics
            metrics.requests.inc(route, scope["method"], str(status))
            metrics.latency.observe(seconds, route)
            if status >= 400:
                metrics.errors.inc(route, code or str(status))
            outcome = "ok" if status < 400 else "rejected" if status == 503 else \
                "client_error" if status < 500 else "server_error"
            log.info(json.dumps({"ts": round(time.time(), 3), "event": "request", "request_id": request_id,
                                 "method": scope["method"], "route": route,
                                 "path": scope["path"][:LOGGED_CHARS],
                                 "status": status, "outcome": outcome, "error": code,
                                 "latency_ms": round(seconds * 1000, 2),
                                 "client": (scope.get("client") or ("-",))[0]}))


class ApiKey:
    """Every route but the ``public`` ones (health checks, API docs) needs the configured key: 401 without it,
    403 with a wrong one."""

    def __init__(self, app: ASGIApp, key: str, header: str, public: tuple[str, ...]) -> None:
        self.app = app
        self.key = key.encode()
        self.header = header.lower().encode()
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(self.header)
        if given is None or not hmac.compare_digest(given, self.key):
            status, code = (401, "unauthorized") if given is None else (403, "forbidden")
            scope.setdefault("state", {})["error_code"] = code
            message = f"missing {self.header.decode()} header" if given is None else "wrong API key"
            await error_response(status, code, message, {"WWW-Authenticate": "ApiKey"})(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    ensure_access_log()
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="shopmatch", version="1", lifespan=lifespan,
                  description="Which shop item is a live-stream clip selling? Matching over a persistent gallery.")
    app.state.service = service
    install_handlers(app)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        request.state.error_code = exc.code
        retry_after = max(settings.batching.retry_after_s, math.ceil(exc.retry_after or 0))
        return error_response(503, exc.code, f"server busy: {exc}; retry later", {"Retry-After": str(retry_after)})

    @app.exception_handler(GalleryUnavailable)
    async def _gallery_unavailable(request: Request, exc: GalleryUnavailable) -> JSONResponse:
        request.state.error_code = "gallery_unavailable"
        return error_response(503, "gallery_unavailable", str(exc), {"Retry-After": "5"})

    @app.exception_handler(GalleryReadOnly)
    async def _read_only(request: Request, exc: GalleryReadOnly) -> JSONResponse:
        request.state.error_code = "read_only_replica"
        return error_response(409, "read_only_replica", str(exc))

    for router in routers(settings):
        app.include_router(router)
    app.add_middleware(BodyLimit, limit=settings.limits.max_upload_bytes)
    if settings.api_key is not None:
        docs = (app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url)
        app.add_middleware(ApiKey, key=settings.api_key.get_secret_value(), header=settings.api_key_header,
                           public=(*PUBLIC_PATHS, *(url for url in docs if url)))
    app.add_middleware(RequestLog, service=service)
    return app


def __getattr__(name: str) -> FastAPI:
    """``service.app:app`` is built on first access, so importing this module loads no models."""
    if name == "app":
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(name)
