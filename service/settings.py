"""Service settings from a YAML file, environment variables (``SHOPMATCH_...``) and the command line.

Precedence, highest first: command-line values, environment variables, the
settings file, the defaults below. Nested values use ``__`` in environment
variables (``SHOPMATCH_LIMITS__MAX_UPLOAD_BYTES=1000000``); lists are JSON
(``SHOPMATCH_ROOTS='["/data/a", "/data/b"]'``). The settings file is named by
``--config`` or ``SHOPMATCH_CONFIG_FILE``, so ``uvicorn service.app:app``
finds it too.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict,
                               YamlConfigSettingsSource)

from dataset.config import StrictModel
from pipeline.model_set import ModelRef, ModelSet, load_model_set

ENV_PREFIX = "SHOPMATCH_"
CONFIG_FILE_ENV = "SHOPMATCH_CONFIG_FILE"


class _Section(StrictModel):
    """A settings section: unknown keys are errors (a misspelt key must not be silently ignored)."""


class Limits(_Section):
    """Input limits: a request over one of them is refused before any model work starts."""

    max_upload_bytes: int = Field(256 * 2**20, gt=0)
    """Whole request body (all files of an upload together): 413 above it."""
    max_clip_seconds: float = Field(120.0, gt=0)
    max_clip_frames: int = Field(5000, gt=0)
    max_image_pixels: int = Field(40_000_000, gt=0)
    """Width x height of one shop image, read from the header before decoding."""
    max_images: int = Field(64, gt=0)
    """Shop images in one query or gallery item."""
    max_request_pixels: int = Field(100_000_000, gt=0)
    """Pixels one request decodes (its images together, or a clip's sampled frames x frame size), read from
    the headers before decoding: 413 above it."""
    max_pixels_in_flight: int = Field(200_000_000, gt=0)
    """Decoded pixels of all requests in progress together (what bounds the server's memory): a request that
    would go over it gets 503 with Retry-After. At least ``max_request_pixels``."""

    @model_validator(mode="after")
    def _one_request_fits(self) -> Limits:
        if self.max_pixels_in_flight < self.max_request_pixels:
            raise ValueError(f"limits.max_pixels_in_flight ({self.max_pixels_in_flight}) is below "
                             f"limits.max_request_pixels ({self.max_request_pixels}): no large request could run")
        return self


class Batching(_Section):
    """Micro-batching of model calls across concurrent requests, and admission control."""

    max_wait_ms: float = Field(5.0, ge=0)
    """How long the first crop of a batch waits for others to join it."""
    max_crops: int = Field(256, gt=0)
    """Crops (or pictures, for the detector) in one model call."""
    max_pending: int = Field(32, gt=0)
    """Requests admitted to model work at once; more get 503 with Retry-After."""
    max_queue_wait_s: float = Field(10.0, gt=0)
    """A request whose expected wait (requests in progress x recent model time per request) is above it gets
    503 with Retry-After instead of waiting: the latency budget admission follows."""
    retry_after_s: int = Field(1, ge=0)
    decode_workers: int = Field(2, gt=0)
    """Threads decoding images and clips, off the event loop."""


MILVUS_INDEXES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "FLAT": ({}, {}),
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 128}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_SQ8": ({"nlist": 1024}, {"nprobe": 32}),
}
"""Milvus index types the gallery accepts, with default build and search parameters (inner product on unit
vectors). ``bench/service_match.py --backend milvus`` measures their recall against exact search."""


class GallerySettings(_Section):
    """Where the gallery lives: ``local`` (``data_dir``, one process) or ``milvus`` (shared by replicas).

    Credentials (``user``/``password`` or ``token``) are secrets: set them in the environment
    (``SHOPMATCH_GALLERY__PASSWORD``), never in a file under version control; they are never logged.
    """

    backend: Literal["local", "milvus"] = "local"
    uri: str = "http://127.0.0.1:19530"
    """Milvus proxy address (``http://host:port`` or ``https://...``)."""
    collection: str = Field("shopmatch", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
    """Prefix of the gallery's Milvus collections (``<collection>_boxes``, ``_entries``, ``_log``): one prefix
    per gallery."""
    db_name: str = ""
    user: str = ""
    password: SecretStr | None = None
    token: SecretStr | None = None
    index: Literal["FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8"] = "HNSW"
    """Milvus index of the box vectors, used by ``search``; the voting itself is exact (see service.gallery)."""
    index_params: dict[str, Any] = {}
    """Build parameters over the index type's defaults (HNSW: M 16, efConstruction 200; IVF: nlist 1024)."""
    search_params: dict[str, Any] = {}
    """Search parameters over the defaults (HNSW: ef 128; IVF: nprobe 32)."""
    consistency: Literal["Strong", "Bounded", "Session", "Eventually"] = "Strong"
    """How fresh a replica's view must be: Strong checks the shared generation on every request, so a read
    after a write through any replica answers from the written state; Bounded may answer from a generation a
    few seconds old (Milvus's graceful time), never from a mix of two."""
    timeout_s: float = Field(30.0, gt=0)
    """Longest wait for one Milvus call; past it the request answers 503."""
    writer: bool = True
    """Whether this replica may change the gallery. Exactly one replica per gallery writes (the others answer
    gallery changes with 409): Milvus has no transaction that could order two writers' commits."""

    @model_validator(mode="after")
    def _known_params(self) -> GallerySettings:
        if not self.uri.startswith(("http://", "https://", "tcp://", "grpc://")):
            raise ValueError(f"gallery.uri must start with http://, https://, tcp:// or grpc://, not "
                             f"{self.uri.split('://')[0]!r}")
        if self.user and self.token is not None:
            raise ValueError("gallery: give either user and password or a token, not both")
        return self

    def milvus_index(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Build and search parameters: the index type's defaults, then this section's overrides."""
        build, search = MILVUS_INDEXES[self.index]
        return {**build, **self.index_params}, {**search, **self.search_params}

    def shown_uri(self) -> str:
        """The URI as messages may show it: without any ``user:password@`` part."""
        scheme, _, rest = self.uri.partition("://")
        return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


class Settings(BaseSettings):
    """Everything the server needs: where data is, which models, limits, and security."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid",
                                      frozen=True)

    data_dir: Path = Path("service_data")
    """Persistent gallery of the local backend: ``gallery.sqlite`` and the FAISS segment files; with any backend,
    where uploads are staged."""
    gallery: GallerySettings = GallerySettings()
    roots: list[Path] = []
    """Folders that path-based requests may read from; every other path is refused (403)."""
    models: Path | None = None
    """A model set (``pipeline.model_set``: what ``python -m pipeline.demo`` writes as ``models.yaml``); its
    detector, embedders and match config serve where the keys below do not name them. Default: the bundled one."""
    detector: ModelRef | None = None
    embedders: list[ModelRef] = []
    device: str = "auto"
    video_backend: Literal["auto", "decord", "opencv"] = "auto"
    """Which library decodes clips (``auto``: decord, then OpenCV for a file decord cannot read)."""
    limits: Limits = Limits()
    batching: Batching = Batching()
    match: Path | None = None
    """The matcher's config (voting rules, search); default: the model set's, else the bundled one
    (``metric_sub/config/match.yaml``), as for run.sh."""
    match_set: list[str] = []
    """``key=value`` overrides of it, e.g. ``vote.cutoff=1.0``."""
    api_key: SecretStr | None = None
    """When set, every route but /healthz, /readyz and the API docs needs it in ``api_key_header`` (401 missing,
    403 wrong)."""
    api_key_header: str = "X-API-Key"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, lt=65536)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def model_set(self) -> ModelSet:
        """The models to serve: ``detector`` and ``embedders`` where given, the rest from the model set (a
        ``DataError`` in one line when it is needed and missing)."""
        if self.detector is not None and self.detector.weights is not None and self.embedders:
            return ModelSet(detector=self.detector, embedders=self.embedders, match=self.match)
        models = load_model_set(self.models)
        return ModelSet(detector=self.detector if self.detector and self.detector.weights else models.detector,
                        embedders=self.embedders or models.embedders,
                        match=self.match if self.match is not None else models.match)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = os.environ.get(CONFIG_FILE_ENV)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings from ``config_file`` (or ``$SHOPMATCH_CONFIG_FILE``), the environment and ``overrides``."""
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"settings file {path} not found")
        os.environ[CONFIG_FILE_ENV] = str(path.resolve())
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
