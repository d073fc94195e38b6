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

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import (BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict,
                               YamlConfigSettingsSource)

ENV_PREFIX = "SHOPMATCH_"
CONFIG_FILE_ENV = "SHOPMATCH_CONFIG_FILE"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Section):
    """A model config (bundled name or YAML path) and its trained checkpoint."""

    config: str
    weights: Path | None = None


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


class Settings(BaseSettings):
    """Everything the server needs: where data is, which models, limits, and security."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid",
                                      frozen=True)

    data_dir: Path = Path("service_data")
    """Persistent gallery: ``gallery.sqlite`` and the FAISS segment files."""
    roots: list[Path] = []
    """Folders that path-based requests may read from; every other path is refused (403)."""
    detector: ModelSpec = ModelSpec(config="seed_vovnet99")
    embedders: list[ModelSpec] = [ModelSpec(config="seed_b5a")]
    device: str = "auto"
    limits: Limits = Limits()
    batching: Batching = Batching()
    match: Path | None = None
    """The matcher's config (voting rules, search); default: the one run.sh uses (``metric_sub/config/match.yaml``)."""
    match_set: list[str] = []
    """``key=value`` overrides of it, e.g. ``vote.cutoff=1.0``."""
    api_key: SecretStr | None = None
    """When set, every route but /healthz, /readyz and the API docs needs it in ``api_key_header`` (401 missing,
    403 wrong)."""
    api_key_header: str = "X-API-Key"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, lt=65536)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

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
