"""The typed dependencies the routes declare: the shared service state, and the API key as OpenAPI shows it."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.settings import Settings
from service.state import Service


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def key_security(settings: Settings) -> list[Any]:
    """With an API key set, OpenAPI declares it on a router's routes (the ``ApiKey`` middleware checks it)."""
    if settings.api_key is None:
        return []
    return [Security(APIKeyHeader(name=settings.api_key_header, auto_error=False,
                                  description="the server's API key"))]
