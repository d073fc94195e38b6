"""Matching: which item a clip sells, or where an item appears among the indexed clips; by path or upload."""
from __future__ import annotations

from fastapi import APIRouter

from service.routes import sources
from service.routes.deps import ServiceDep, key_security
from service.schemas import FolderRequest, MatchResponse, UploadFiles, UploadId, refusals
from service.settings import Settings


def router(settings: Settings) -> APIRouter:
    keyed = settings.api_key is not None
    routes = APIRouter(dependencies=key_security(settings), tags=["match"])

    @routes.post("/v1/match/folder", response_model=MatchResponse,
                 responses=refusals(keyed, 400, 403, 404, 413, 415, 422, 503))
    async def match_folder(body: FolderRequest, service: ServiceDep) -> MatchResponse:
        """Which item does this clip sell, or where is this item in the indexed clips? The query is a path."""
        kind, source_id, files, path = sources.path_source(service, body)
        return await sources.match(service, kind, source_id, files, str(path), strict=False)

    @routes.post("/v1/match", response_model=MatchResponse, responses=refusals(keyed, 400, 413, 415, 422, 503))
    async def match_upload(service: ServiceDep, files: UploadFiles, id: UploadId = None) -> MatchResponse:
        """The same as ``/v1/match/folder`` with uploaded files: one MP4 clip, or JPEG/PNG shop images."""
        return await sources.uploaded(service, files, id, id_required=False, then=sources.match)

    return routes
