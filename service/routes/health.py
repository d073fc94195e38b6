"""Health: whether the process is alive and ready (public), and its status and metrics (behind the key)."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from service.errors import ApiError
from service.metrics import CONTENT_TYPE
from service.routes.deps import ServiceDep, key_security
from service.schemas import Readiness, ServerStatus, refusals
from service.settings import Settings

PUBLIC_PATHS = ("/healthz", "/readyz")


def public_router() -> APIRouter:
    """Routes anyone may call: they say whether the process is alive and ready, nothing more."""
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @router.get("/readyz", response_model=Readiness, responses=refusals(False, 503))
    async def readyz(service: ServiceDep) -> Readiness:
        """Models loaded and the gallery readable; 503 otherwise (the reason is in ``/v1/status``)."""
        if service.problem is not None or service.engine is None or service.store is None:
            raise ApiError(503, "not_ready", "not ready", {"Retry-After": "5"})
        return Readiness(status="ready")

    return router


def router(settings: Settings) -> APIRouter:
    keyed = settings.api_key is not None
    routes = APIRouter(dependencies=key_security(settings), tags=["health"])

    @routes.get("/v1/status", response_model=ServerStatus, responses=refusals(keyed))
    async def status(service: ServiceDep) -> ServerStatus:
        """Readiness with its reason, the device, the models (with weight digests) and the gallery's size."""
        return service.status()

    @routes.get("/metrics", response_class=PlainTextResponse, responses=refusals(keyed, json_ref=True))
    async def metrics(service: ServiceDep) -> PlainTextResponse:
        """Prometheus text format: requests, latencies, errors, gallery size, batch sizes."""
        return PlainTextResponse(service.metrics.render(), media_type=CONTENT_TYPE)

    return routes
