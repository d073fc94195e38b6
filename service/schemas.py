"""The API's request and response bodies, the id and path parameter types, and the refusals each route
documents: the contract every router module shares."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import File, Form, UploadFile
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from service.errors import ErrorBody
from service.gallery import Kind
from service.paths import MAX_PATH_CHARS

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
SourceId = Annotated[str, Field(pattern=ID_PATTERN)]
KIND_OF_PATH: dict[str, Kind] = {"items": "item", "clips": "clip"}

_WHY = {400: "a body that cannot be parsed (not JSON or not UTF-8, a broken multipart form)",
        401: "the API key header is missing", 403: "a wrong API key, or a path outside the data roots",
        404: "no such path or gallery entry", 409: "a gallery change sent to a replica that does not write it",
        413: "request body or its decoded pixels over the limits",
        415: "neither JPEG/PNG shop images nor an MP4 clip", 422: "invalid request, or a file that cannot be used",
        503: "not ready, or busy (count, expected wait or pixels in flight over their limits): see Retry-After"}


def refusals(keyed: bool, *statuses: int, json_ref: bool = False) -> dict[int | str, dict[str, Any]]:
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


UploadFiles = Annotated[list[UploadFile], File(min_length=1, description="one MP4 clip, or JPEG/PNG shop images")]
UploadId = Annotated[str | None, Form(pattern=ID_PATTERN, description="id of the query or entry")]
EntryKind = Literal["items", "clips"]
EntryId = Annotated[str, PathParam(pattern=ID_PATTERN)]
