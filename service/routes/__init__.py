"""The HTTP routes, one module per resource: health, match, gallery."""
from __future__ import annotations

from fastapi import APIRouter

from service.routes import gallery, health, match
from service.settings import Settings

__all__ = ["PUBLIC_PATHS", "routers"]

PUBLIC_PATHS = health.PUBLIC_PATHS


def routers(settings: Settings) -> list[APIRouter]:
    """Every router, in the order their routes are documented."""
    return [health.public_router(), health.router(settings), match.router(settings), gallery.router(settings)]
