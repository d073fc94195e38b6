"""The HTTP API: health, metrics, matching by path or upload, and gallery management.

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
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.batcher import Overloaded
from service.engine import Engine
from service.errors import ApiError, ErrorBody, error_response, install_handlers
from service.gallery import (Entry, Gallery, GalleryError, GalleryReadOnly, GalleryUnavailable, Kind, Snapshot,
                             SourceBoxes, open_gallery)
from service.logs import ACCESS, ensure_access_log
from service.metrics import CONTENT_TYPE, Metrics
from service.paths import MAX_PATH_CHARS, media_files, relative_to_roots, resolve_request_path
from service.settings import Settings, load_settings
from service.uploads import BodyLimit, stage, upload_dir

log = logging.getLogger(ACCESS)

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
SourceId = Annotated[str, Field(pattern=ID_PATTERN)]
KIND_OF_PATH: dict[str, Kind] = {"items": "item", "clips": "clip"}
HEALTH_PATHS = ("/healthz", "/readyz")
LOGGED_CHARS = 200
"""Longest client string (a URL path, an exception message) copied into a log line."""

_WHY = {400: "a body that cannot be parsed (not JSON or not UTF-8, a broken multipart form)",
        401: "the API key header is missing", 403: "a wrong API key, or a path outside the data roots",
        404: "no such path or gallery entry", 409: "a gallery change sent to a replica that does not write it",
        413: "request body or its decoded pixels over the limits",
        415: "neither JPEG/PNG shop images nor an MP4 clip", 422: "invalid request, or a file that cannot be used",
        503: "not ready, or busy (count, expected wait or pixels in flight over their limits): see Retry-After"}


def _errors(keyed: bool, *statuses: int, json_ref: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for the refusals a route can answer, each in the error shape.

    ``json_ref`` names the shape's JSON schema directly, for a route whose own answers are not JSON (a model
    there would be documented in the route's media type).
    """
    codes = sorted({*statuses, *((401, 403) if keyed else ())})
    if json_ref:
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        return {status: {"description": _WHY[status], "content": content} for status in codes}
    return {status: {"model": ErrorBody, "description": _WHY[status]} for status in codes}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FolderRequest(_Strict):
    path: str = Field(min_length=1, max_length=MAX_PATH_CHARS, pattern=r"^[^\x00]+$",
                      description="a folder of shop images or a clip (or a folder holding one clip), "
                                  "relative to a data root or absolute inside one")
    id: SourceId | None = Field(None, description="id of the query (default: the folder name or clip file stem)")


class Pair(BaseModel):
    item_id: str
    video_id: str
    img_name: str
    item_box: list[int]
    frame_index: int
    frame_box: list[int]
    distance: float = Field(description="mean squared L2 distance of the supporting box pairs")
    votes: int


class CandidatePair(Pair):
    kept: bool
    why: str = Field(description="why a candidate was dropped (one-to-one assignment or cutoff)")


class QueryInfo(BaseModel):
    kind: Kind
    id: str
    pictures: int
    boxes: int
    skipped: list[str]


class MatchResponse(BaseModel):
    query: QueryInfo
    match: Pair | None = Field(description="null: no match (see reason)")
    reason: str
    candidates: list[CandidatePair]
    generation: int
    seconds: float


class EntryOut(BaseModel):
    kind: Kind
    id: str
    origin: str = Field(description="where it was read: a path relative to its data root, or 'upload'")
    pictures: int
    boxes: int
    added_at: float


class AddResponse(EntryOut):
    replaced: bool
    skipped: list[str]
    generation: int


class EntryList(BaseModel):
    entries: list[EntryOut]
    total: int
    offset: int
    limit: int


class Stats(BaseModel):
    generation: int
    items: int
    clips: int
    item_boxes: int
    clip_boxes: int
    segments: int = Field(description="segment files of the local backend (0 for milvus)")
    dim: int
    data_dir: str = Field(description="the gallery folder's name (local) or collection prefix (milvus)")
    backend: Literal["local", "milvus"]
    models: dict[str, Any]


class Readiness(BaseModel):
    status: Literal["ready"]


class ServerStatus(BaseModel):
    status: Literal["ready", "not_ready"]
    problem: str | None = Field(description="why the server is not ready")
    generation: int | None
    items: int | None
    clips: int | None
    device: str | None
    dim: int | None
    models: dict[str, Any] | None
    vote: dict[str, Any] | None = Field(description="the matcher's voting rules")


class Service:
    """What the routes share: settings, metrics, and once started the engine and the gallery."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.engine: Engine | None = None
        self.store: Gallery | None = None
        self.problem: str | None = "starting"
        self.voter = ThreadPoolExecutor(1, thread_name_prefix="gallery-votes")

    def start(self) -> None:
        self.engine = Engine(self.settings, self.metrics)
        try:
            self.store = open_gallery(self.settings, self.engine.dim, self.engine.models, str(self.engine.device))
            self.store.on_change = self._precompute_votes
            self._precompute_votes(self.store.snapshot)
            self.problem = None
        except GalleryError as exc:
            self.problem = self._without_data_dir(str(exc))
            logging.getLogger(__name__).error("gallery unusable: %s", exc)
        self.metrics.gauge("shopmatch_gallery_entries", "Indexed items and clips.", self._entries, ("kind",))
        self.metrics.gauge("shopmatch_gallery_vectors", "Indexed box vectors.", self._vectors, ("kind",))
        self.metrics.gauge("shopmatch_gallery_votes_ready",
                           "1 once the current gallery's own votes are computed (until then a match waits for them).",
                           lambda: {(): float(self.store is not None and self.engine is not None
                                              and self.engine.matcher.has_votes(self.store.snapshot))})
        self.metrics.gauge("shopmatch_requests_in_progress", "Requests admitted to model work.",
                           lambda: {(): self.engine.admission.active if self.engine else 0})
        self.metrics.gauge("shopmatch_batch_queue_depth", "Jobs waiting for a model call.",
                           lambda: {(b.name,): b.depth for b in self._batchers()}, ("model",))

    def _without_data_dir(self, text: str) -> str:
        """A message as answers may show it: the gallery folder named ``data_dir``, not by its server path."""
        folder = self.settings.data_dir
        return text.replace(str(folder.resolve()), "data_dir").replace(str(folder), "data_dir")

    def _precompute_votes(self, snapshot: Snapshot) -> None:
        """Vote the gallery against itself now, in the background, instead of in the first match after a change.

        That vote searches every group box against the whole gallery (about a
        minute on two cores at 4000 items and 4000 clips), so a query arriving
        meanwhile still waits for it; a snapshot already replaced is skipped.
        """
        def run() -> None:
            if self.store is not None and self.store.snapshot is snapshot and self.engine is not None:
                self.engine.matcher.gallery_votes(snapshot)

        self.voter.submit(run)

    def _batchers(self) -> list:
        return [self.engine.detect_batcher, self.engine.embed_batcher] if self.engine else []

    def _entries(self) -> dict[tuple[str, ...], float]:
        snap = self.store.snapshot if self.store else None
        return {(k,): snap.count(k) if snap else 0 for k in ("item", "clip")}

    def _vectors(self) -> dict[tuple[str, ...], float]:
        snap = self.store.snapshot if self.store else None
        return {(k,): len(snap.sides[k]) if snap else 0 for k in ("item", "clip")}

    def stop(self) -> None:
        self.voter.shutdown(wait=False, cancel_futures=True)
        if self.engine is not None:
            self.engine.close()
        if self.store is not None:
            self.store.close()

    def ready(self) -> tuple[Engine, Gallery]:
        if self.problem is not None or self.engine is None or self.store is None:
            raise ApiError(503, "not_ready", self.problem or "starting", {"Retry-After": "5"})
        return self.engine, self.store

    def status(self) -> ServerStatus:
        """Readiness with its reason, the models and the gallery's size: for operators (behind the key)."""
        ready = self.problem is None and self.engine is not None and self.store is not None
        snap = self.store.snapshot if self.store is not None else None
        described = self.engine.describe() if self.engine is not None else {}
        return ServerStatus(status="ready" if ready else "not_ready", problem=None if ready else self.problem,
                            generation=snap.generation if snap else None,
                            items=snap.count("item") if snap else None, clips=snap.count("clip") if snap else None,
                            device=described.get("device"), dim=described.get("dim"),
                            models=described.get("models"), vote=described.get("vote"))

    def shown_entry(self, entry: Entry) -> EntryOut:
        """An entry as answers show it: its origin relative to its data root."""
        return EntryOut(**{**entry.to_json(), "origin": relative_to_roots(entry.origin, self.settings.roots)})


def _service(request: Request) -> Service:
    return request.app.state.service


async def _embed(engine: Engine, kind: Kind, source_id: str, files: list[Path], origin: str,
                 strict: bool) -> SourceBoxes:
    if kind == "clip":
        return await engine.embed_clip(source_id, files[0], origin)
    return await engine.embed_item(source_id, files, origin, strict)


def _default_id(kind: Kind, files: list[Path], folder: Path | None) -> str:
    return files[0].stem if kind == "clip" or folder is None else folder.name


def _path_source(service: Service, body: FolderRequest) -> tuple[Kind, str, list[Path], Path]:
    """Confine a requested path to the roots and name what it holds: kind, id, media files, resolved path."""
    path = resolve_request_path(body.path, service.settings.roots)
    kind, files = media_files(path, service.settings.roots)
    return kind, body.id or _default_id(kind, files, path if path.is_dir() else None), files, path


async def _match(service: Service, kind: Kind, source_id: str, files: list[Path], origin: str,
                 strict: bool) -> MatchResponse:
    engine, store = service.ready()
    started = time.perf_counter()
    with engine.admission.slot():
        query = await _embed(engine, kind, source_id, files, origin, strict)
        snapshot = await run_in_threadpool(store.current)  # a shared gallery: the newest generation
        answer = await run_in_threadpool(engine.match, query, snapshot)
    info = QueryInfo(kind=kind, id=source_id, pictures=query.pictures, boxes=len(query.boxes),
                     skipped=query.skipped)
    return MatchResponse(query=info, generation=snapshot.generation,
                         seconds=round(time.perf_counter() - started, 4), **answer)


async def _add(service: Service, kind: Kind, source_id: str, files: list[Path], origin: str,
               strict: bool) -> JSONResponse:
    engine, store = service.ready()
    with engine.admission.slot():
        source = await _embed(engine, kind, source_id, files, origin, strict)
    snapshot, replaced_keys = await run_in_threadpool(store.upsert, [source])
    replaced = (kind, source_id) in replaced_keys
    entry = service.shown_entry(snapshot.entries[(kind, source_id)])
    body = AddResponse(**entry.model_dump(), replaced=replaced, skipped=source.skipped,
                       generation=snapshot.generation)
    return JSONResponse(body.model_dump(), status_code=200 if replaced else 201)


def _upload_id(given: str | None, kind: Kind, files: list[Path], required: bool) -> str:
    """The form's id (its pattern checked by the schema), or the default for the upload's kind."""
    if given:
        return given
    if kind == "item" and required:
        raise ApiError(422, "id_required", "shop images need an item id in the 'id' form field")
    return files[0].stem if kind == "clip" else "upload"


UploadFiles = Annotated[list[UploadFile], File(min_length=1, description="one MP4 clip, or JPEG/PNG shop images")]
UploadId = Annotated[str | None, Form(pattern=ID_PATTERN, description="id of the query or entry")]
EntryKind = Literal["items", "clips"]
EntryId = Annotated[str, PathParam(pattern=ID_PATTERN)]


def _health_router() -> APIRouter:
    """Routes anyone may call: they say whether the process is alive and ready, nothing more."""
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @router.get("/readyz", response_model=Readiness, responses=_errors(False, 503))
    async def readyz(request: Request) -> Readiness:
        """Models loaded and the gallery readable; 503 otherwise (the reason is in ``/v1/status``)."""
        service = _service(request)
        if service.problem is not None or service.engine is None or service.store is None:
            raise ApiError(503, "not_ready", "not ready", {"Retry-After": "5"})
        return Readiness(status="ready")

    return router


def _router(settings: Settings) -> APIRouter:
    """The API proper; with an API key set, OpenAPI declares it on every route here (the middleware checks it)."""
    keyed = settings.api_key is not None
    security = [Security(APIKeyHeader(name=settings.api_key_header, auto_error=False,
                                      description="the server's API key"))] if keyed else []
    router = APIRouter(dependencies=security)

    @router.get("/v1/status", response_model=ServerStatus, tags=["health"], responses=_errors(keyed))
    async def status(request: Request) -> ServerStatus:
        """Readiness with its reason, the device, the models (with weight digests) and the gallery's size."""
        return _service(request).status()

    @router.get("/metrics", tags=["health"], response_class=PlainTextResponse,
                responses=_errors(keyed, json_ref=True))
    async def metrics(request: Request) -> PlainTextResponse:
        """Prometheus text format: requests, latencies, errors, gallery size, batch sizes."""
        return PlainTextResponse(_service(request).metrics.render(), media_type=CONTENT_TYPE)

    @router.post("/v1/match/folder", response_model=MatchResponse, tags=["match"],
                 responses=_errors(keyed, 400, 403, 404, 413, 415, 422, 503))
    async def match_folder(body: FolderRequest, request: Request) -> MatchResponse:
        """Which item does this clip sell, or where is this item in the indexed clips? The query is a path."""
        service = _service(request)
        kind, source_id, files, path = _path_source(service, body)
        return await _match(service, kind, source_id, files, str(path), strict=False)

    @router.post("/v1/match", response_model=MatchResponse, tags=["match"],
                 responses=_errors(keyed, 400, 413, 415, 422, 503))
    async def match_upload(request: Request, files: UploadFiles, id: UploadId = None) -> MatchResponse:
        """The same as ``/v1/match/folder`` with uploaded files: one MP4 clip, or JPEG/PNG shop images."""
        service = _service(request)
        _, store = service.ready()
        with upload_dir(store.uploads) as folder:
            kind, paths = await stage(files, Path(folder))
            source_id = _upload_id(id, kind, paths, required=False)
            return await _match(service, kind, source_id, paths, "upload", strict=True)

    replaced = {200: {"model": AddResponse, "description": "an entry with this kind and id was replaced"}}

    @router.post("/v1/gallery", response_model=AddResponse, status_code=201, tags=["gallery"],
                 responses={**replaced, **_errors(keyed, 400, 403, 404, 409, 413, 415, 422, 503)})
    async def add_path(body: FolderRequest, request: Request) -> JSONResponse:
        """Index an item folder or a clip found at a path inside the data roots."""
        service = _service(request)
        kind, source_id, files, path = _path_source(service, body)
        return await _add(service, kind, source_id, files, str(path), strict=False)

    @router.post("/v1/gallery/upload", response_model=AddResponse, status_code=201, tags=["gallery"],
                 responses={**replaced, **_errors(keyed, 400, 409, 413, 415, 422, 503)})
    async def add_upload(request: Request, files: UploadFiles, id: UploadId = None) -> JSONResponse:
        """Index uploaded shop images (``id`` required) or one clip (``id`` defaults to the file stem)."""
        service = _service(request)
        _, store = service.ready()
        with upload_dir(store.uploads) as folder:
            kind, paths = await stage(files, Path(folder))
            source_id = _upload_id(id, kind, paths, required=True)
            return await _add(service, kind, source_id, paths, "upload", strict=True)

    @router.get("/v1/gallery", response_model=EntryList, tags=["gallery"], responses=_errors(keyed, 422, 503))
    async def list_entries(request: Request, kind: EntryKind | None = None,
                           offset: Annotated[int, Query(ge=0)] = 0,
                           limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> EntryList:
        """Indexed entries, ordered by kind and id."""
        service = _service(request)
        _, store = service.ready()
        snapshot = await run_in_threadpool(store.current)
        entries = sorted(snapshot.entries.values(), key=lambda e: (e.kind, e.source_id))
        if kind is not None:
            entries = [e for e in entries if e.kind == KIND_OF_PATH[kind]]
        page = [service.shown_entry(e) for e in entries[offset:offset + limit]]
        return EntryList(entries=page, total=len(entries), offset=offset, limit=limit)

    @router.get("/v1/gallery/stats", response_model=Stats, tags=["gallery"], responses=_errors(keyed, 503))
    async def stats(request: Request) -> Stats:
        engine, store = _service(request).ready()
        snap = await run_in_threadpool(store.current)
        where = store.describe()
        return Stats(generation=snap.generation, items=snap.count("item"), clips=snap.count("clip"),
                     item_boxes=len(snap.sides["item"]), clip_boxes=len(snap.sides["clip"]),
                     segments=where["segments"], dim=snap.dim, data_dir=where["location"],
                     backend=where["backend"], models=engine.models)

    @router.get("/v1/gallery/{kind}/{source_id}", response_model=EntryOut, tags=["gallery"],
                responses=_errors(keyed, 404, 422, 503))
    async def get_entry(request: Request, kind: EntryKind, source_id: EntryId) -> EntryOut:
        service = _service(request)
        _, store = service.ready()
        entry = (await run_in_threadpool(store.current)).entries.get((KIND_OF_PATH[kind], source_id))
        if entry is None:
            raise ApiError(404, "not_found", f"no {KIND_OF_PATH[kind]} {source_id!r} in the gallery")
        return service.shown_entry(entry)

    @router.delete("/v1/gallery/{kind}/{source_id}", response_model=EntryOut, tags=["gallery"],
                   responses=_errors(keyed, 404, 409, 422, 503))
    async def delete_entry(request: Request, kind: EntryKind, source_id: EntryId) -> EntryOut:
        service = _service(request)
        _, store = service.ready()
        try:
            entry = await run_in_threadpool(store.delete, KIND_OF_PATH[kind], source_id)
        except KeyError:
            raise ApiError(404, "not_found", f"no {KIND_OF_PATH[kind]} {source_id!r} in the gallery") from None
        return service.shown_entry(entry)

    return router


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

    app.include_router(_health_router())
    app.include_router(_router(settings))
    app.add_middleware(BodyLimit, limit=settings.limits.max_upload_bytes)
    if settings.api_key is not None:
        docs = (app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url)
        app.add_middleware(ApiKey, key=settings.api_key.get_secret_value(), header=settings.api_key_header,
                           public=(*HEALTH_PATHS, *(url for url in docs if url)))
    app.add_middleware(RequestLog, service=service)
    return app


def __getattr__(name: str) -> FastAPI:
    """``service.app:app`` is built on first access, so importing this module loads no models."""
    if name == "app":
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(name)
