"""The gallery: index item folders and clips (by path or upload), list, count, look up and delete entries."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.errors import ApiError
from service.routes import sources
from service.routes.deps import ServiceDep, key_security
from service.schemas import (KIND_OF_PATH, AddResponse, EntryId, EntryKind, EntryList, EntryOut, FolderRequest,
                             Stats, UploadFiles, UploadId, refusals)
from service.settings import Settings


def router(settings: Settings) -> APIRouter:
    keyed = settings.api_key is not None
    routes = APIRouter(dependencies=key_security(settings), tags=["gallery"])
    replaced = {200: {"model": AddResponse, "description": "an entry with this kind and id was replaced"}}

    @routes.post("/v1/gallery", response_model=AddResponse, status_code=201,
                 responses={**replaced, **refusals(keyed, 400, 403, 404, 409, 413, 415, 422, 503)})
    async def add_path(body: FolderRequest, service: ServiceDep) -> JSONResponse:
        """Index an item folder or a clip found at a path inside the data roots."""
        kind, source_id, files, path = sources.path_source(service, body)
        return await sources.add(service, kind, source_id, files, str(path), strict=False)

    @routes.post("/v1/gallery/upload", response_model=AddResponse, status_code=201,
                 responses={**replaced, **refusals(keyed, 400, 409, 413, 415, 422, 503)})
    async def add_upload(service: ServiceDep, files: UploadFiles, id: UploadId = None) -> JSONResponse:
        """Index uploaded shop images (``id`` required) or one clip (``id`` defaults to the file stem)."""
        return await sources.uploaded(service, files, id, id_required=True, then=sources.add)

    @routes.get("/v1/gallery", response_model=EntryList, responses=refusals(keyed, 422, 503))
    async def list_entries(service: ServiceDep, kind: EntryKind | None = None,
                           offset: Annotated[int, Query(ge=0)] = 0,
                           limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> EntryList:
        """Indexed entries, ordered by kind and id."""
        _, store = service.ready()
        snapshot = await run_in_threadpool(store.current)
        entries = sorted(snapshot.entries.values(), key=lambda e: (e.kind, e.source_id))
        if kind is not None:
            entries = [e for e in entries if e.kind == KIND_OF_PATH[kind]]
        page = [service.shown_entry(e) for e in entries[offset:offset + limit]]
        return EntryList(entries=page, total=len(entries), offset=offset, limit=limit)

    @routes.get("/v1/gallery/stats", response_model=Stats, responses=refusals(keyed, 503))
    async def stats(service: ServiceDep) -> Stats:
        engine, store = service.ready()
        snap = await run_in_threadpool(store.current)
        where = store.describe()
        return Stats(generation=snap.generation, items=snap.count("item"), clips=snap.count("clip"),
                     item_boxes=len(snap.sides["item"]), clip_boxes=len(snap.sides["clip"]),
                     segments=where["segments"], dim=snap.dim, data_dir=where["location"],
                     backend=where["backend"], models=engine.models)

    @routes.get("/v1/gallery/{kind}/{source_id}", response_model=EntryOut, responses=refusals(keyed, 404, 422, 503))
    async def get_entry(service: ServiceDep, kind: EntryKind, source_id: EntryId) -> EntryOut:
        _, store = service.ready()
        entry = (await run_in_threadpool(store.current)).entries.get((KIND_OF_PATH[kind], source_id))
        if entry is None:
            raise ApiError(404, "not_found", f"no {KIND_OF_PATH[kind]} {source_id!r} in the gallery")
        return service.shown_entry(entry)

    @routes.delete("/v1/gallery/{kind}/{source_id}", response_model=EntryOut,
                   responses=refusals(keyed, 404, 409, 422, 503))
    async def delete_entry(service: ServiceDep, kind: EntryKind, source_id: EntryId) -> EntryOut:
        _, store = service.ready()
        try:
            entry = await run_in_threadpool(store.delete, KIND_OF_PATH[kind], source_id)
        except KeyError:
            raise ApiError(404, "not_found", f"no {KIND_OF_PATH[kind]} {source_id!r} in the gallery") from None
        return service.shown_entry(entry)

    return routes
