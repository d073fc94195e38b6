"""One JSON error shape for every refusal: ``{"error": {"status", "code", "message"}}``.

Clients branch on ``code`` (stable, machine-readable) and show ``message``
(which names the file or the limit), whichever layer raised the error.
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match


class ErrorDetail(BaseModel):
    status: int
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every refusal's body, whatever its status."""

    error: ErrorDetail


class ApiError(Exception):
    """A refusal with its HTTP status; raised anywhere below the routes."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


REFUSAL_STATUS = {"too_many_pixels": 413, "image_too_large": 422, "corrupt_file": 422, "too_many_images": 422,
                  "clip_too_long": 422}
"""The HTTP status of each code the inference layer refuses a source with."""


class Refused(Exception):
    """A source the inference layer will not process (over a limit, unreadable): a stable ``code`` and a
    message naming the file. It knows no HTTP; ``install_handlers`` answers it with ``REFUSAL_STATUS``."""

    def __init__(self, code: str, message: str) -> None:
        if code not in REFUSAL_STATUS:
            raise ValueError(f"unknown refusal code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def as_api_error(self) -> ApiError:
        return ApiError(REFUSAL_STATUS[self.code], self.code, self.message)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "code": code, "message": message}}, status_code=status,
                        headers=headers)


_HTTP_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               413: "too_large", 415: "unsupported_media_type", 422: "invalid_request", 503: "unavailable"}


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path: routes of one path are separate (GET and DELETE), and
    the framework's 405 names only the first one's."""
    routes = request.app.router.routes
    return ", ".join(m for m in _METHODS
                     if any(r.matches({**request.scope, "method": m})[0] is Match.FULL for r in routes))


def install_handlers(app: FastAPI) -> None:
    """Route framework errors (unknown route, bad JSON body) into the same shape as ``ApiError``."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        request.state.error_code = exc.code
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return await _api_error(request, exc.as_api_error())

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        request.state.error_code = "invalid_request"
        return error_response(422, "invalid_request", problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        request.state.error_code = code
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        return error_response(exc.status_code, code, str(exc.detail), headers)
