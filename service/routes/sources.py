"""A query or gallery source, from a request path or an upload, through the engine: what matching and indexing
share."""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from fastapi import UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.engine import Engine
from service.errors import ApiError
from service.gallery import Kind, SourceBoxes
from service.paths import media_files, resolve_request_path
from service.schemas import AddResponse, FolderRequest, MatchResponse, QueryInfo
from service.state import Service
from service.uploads import stage, upload_dir

T = TypeVar("T")


async def embed(engine: Engine, kind: Kind, source_id: str, files: list[Path], origin: str,
                strict: bool) -> SourceBoxes:
    if kind == "clip":
        return await engine.embed_clip(source_id, files[0], origin)
    return await engine.embed_item(source_id, files, origin, strict)


def _default_id(kind: Kind, files: list[Path], folder: Path | None) -> str:
    return files[0].stem if kind == "clip" or folder is None else folder.name


def path_source(service: Service, body: FolderRequest) -> tuple[Kind, str, list[Path], Path]:
    """Confine a requested path to the roots and name what it holds: kind, id, media files, resolved path."""
    path = resolve_request_path(body.path, service.settings.roots)
    kind, files = media_files(path, service.settings.roots)
    return kind, body.id or _default_id(kind, files, path if path.is_dir() else None), files, path


async def uploaded(service: Service, files: list[UploadFile], given_id: str | None, *, id_required: bool,
                   then: Callable[..., Awaitable[T]]) -> T:
    """Stage an upload in the gallery's upload folder and hand it to ``then`` (``match`` or ``add``), strict:
    every uploaded file must be readable."""
    _, store = service.ready()
    with upload_dir(store.uploads) as folder:
        kind, paths = await stage(files, Path(folder))
        source_id = upload_id(given_id, kind, paths, required=id_required)
        return await then(service, kind, source_id, paths, "upload", strict=True)


def upload_id(given: str | None, kind: Kind, files: list[Path], required: bool) -> str:
    """The form's id (its pattern checked by the schema), or the default for the upload's kind."""
    if given:
        return given
    if kind == "item" and required:
        raise ApiError(422, "id_required", "shop images need an item id in the 'id' form field")
    return files[0].stem if kind == "clip" else "upload"


async def match(service: Service, kind: Kind, source_id: str, files: list[Path], origin: str,
                strict: bool) -> MatchResponse:
    engine, store = service.ready()
    started = time.perf_counter()
    with engine.admission.slot():
        query = await embed(engine, kind, source_id, files, origin, strict)
        snapshot = await run_in_threadpool(store.current)  # a shared gallery: the newest generation
        answer = await run_in_threadpool(engine.match, query, snapshot)
    info = QueryInfo(kind=kind, id=source_id, pictures=query.pictures, boxes=len(query.boxes),
                     skipped=query.skipped)
    return MatchResponse(query=info, generation=snapshot.generation,
                         seconds=round(time.perf_counter() - started, 4), **answer)


async def add(service: Service, kind: Kind, source_id: str, files: list[Path], origin: str,
              strict: bool) -> JSONResponse:
    engine, store = service.ready()
    with engine.admission.slot():
        source = await embed(engine, kind, source_id, files, origin, strict)
    snapshot, replaced_keys = await run_in_threadpool(store.upsert, [source])
    replaced = (kind, source_id) in replaced_keys
    entry = service.shown_entry(snapshot.entries[(kind, source_id)])
    body = AddResponse(**entry.model_dump(), replaced=replaced, skipped=source.skipped,
                       generation=snapshot.generation)
    return JSONResponse(body.model_dump(), status_code=200 if replaced else 201)
