"""Uploaded files: size limit while the body streams in, type check by content, staging on disk.

The size limit is enforced on the bytes actually received (a client may lie
in Content-Length or stream without one), before the multipart parser
spools anything to disk. A file's type is judged from its first bytes, not
its name, so a renamed executable is refused as unsupported (415) and a
truncated JPEG as corrupt (422, when decoding fails later).
"""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ApiError, error_response

IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


def sniff(head: bytes) -> str | None:
    """``"image"``, ``"clip"`` (an ISO media file: ``ftyp`` box) or ``None`` for anything else."""
    if head.startswith(IMAGE_MAGIC):
        return "image"
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return "clip"
    return None


class BodyLimit:
    """ASGI middleware: 413 once a request body exceeds ``limit`` bytes (declared or streamed).

    A streamed (chunked) body goes over the limit inside the framework's form or JSON parser, which turns
    any error into its own 400; the answer it then starts is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = exceeded = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True
                    raise _TooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:  # the body parser caught the refusal and answers 400: answer 413
                raise _TooLarge()
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "too_large", f"request body over the limit of {self.limit} bytes",
                                  {"Connection": "close"})
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


def safe_name(name: str | None, fallback: str) -> str:
    """A client's file name reduced to a plain base name (no folders, no odd characters)."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name or "").name).lstrip(".")
    return base[:128] or fallback


async def stage(files: list[UploadFile], folder: Path) -> tuple[str, list[Path]]:
    """Write the uploads into ``folder``; ``("clip", [path])`` or ``("item", [paths])``.

    Refuses (415) a file that is neither a JPEG/PNG image nor an MP4 clip, a
    mix of both, and more than one clip.
    """
    if not files:
        raise ApiError(422, "no_files", "upload one clip or one or more shop images in the 'files' field")
    kinds, paths = [], []
    for n, upload in enumerate(files):
        head = await upload.read(16)
        kind = sniff(head)
        if kind is None:
            raise ApiError(415, "unsupported_media_type",
                           f"{safe_name(upload.filename, f'file {n}')}: not a JPEG/PNG image or an MP4 clip")
        suffix = ".mp4" if kind == "clip" else (".png" if head.startswith(b"\x89PNG") else ".jpg")
        stem = Path(safe_name(upload.filename, str(n))).stem or str(n)
        path = folder / f"{stem}{suffix}"
        if path.exists():
            raise ApiError(422, "duplicate_name", f"two uploaded files are named {stem}")
        await upload.seek(0)
        with open(path, "wb") as out:
            shutil.copyfileobj(upload.file, out, 1 << 20)
        kinds.append(kind)
        paths.append(path)
    if len(set(kinds)) > 1:
        raise ApiError(422, "mixed_upload", "upload either one clip or shop images, not both")
    if kinds[0] == "clip" and len(paths) > 1:
        raise ApiError(422, "several_clips", f"{len(paths)} clips uploaded; one query is one clip")
    return ("clip" if kinds[0] == "clip" else "item"), paths


def upload_dir(parent: Path) -> tempfile.TemporaryDirectory:
    """A request's staging folder under ``parent`` (the gallery's, so a restart clears what a kill left)."""
    return tempfile.TemporaryDirectory(prefix="upload-", dir=parent)
