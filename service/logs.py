"""Structured logs: every line one JSON object, so request lines and library messages parse alike."""
from __future__ import annotations

import json
import logging

ACCESS = "service.access"


class JsonFormatter(logging.Formatter):
    """Request lines are already JSON objects; other records become ``{"ts", "level", "logger", "message"}``."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == ACCESS:
            return record.getMessage()
        line = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup_logging(level: str = "info") -> None:
    """JSON lines on stderr for this process's loggers, including uvicorn's (its access log is replaced)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # faiss reports at info each SIMD build it tries; a wheel without the AVX2 one reads like a failure
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def ensure_access_log() -> None:
    """Under a bare ``uvicorn service.app:app`` nobody configured logging: give request lines a handler."""
    access = logging.getLogger(ACCESS)
    if not access.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False

