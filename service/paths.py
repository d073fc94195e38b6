"""Confining request paths to the configured data roots.

A path from a request is a claim made by a client: it may contain ``..``,
point anywhere on the machine, or pass through a symlink that leads out of a
root. Every path is therefore resolved (symlinks followed) and must land
inside a root, and so must every file read from a folder. Refusals are 403
and do not reveal whether the refused target exists; a missing target inside
a root is 404.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from dataset.layout import IMAGE_SUFFIXES, VIDEO_SUFFIXES, natural_key
from service.errors import ApiError


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


MAX_PATH_CHARS = 1024
"""Longest path a request may name (the schema's maxLength too)."""
NAME_MAX_BYTES = 255
"""Longest file name the file systems in use allow: a longer component cannot name anything."""


def shown(raw: str, limit: int = 120) -> str:
    """A client's string as quoted back in a message: cut short, so answers and logs stay small."""
    return repr(raw) if len(raw) <= limit else f"{raw[:limit]!r}... ({len(raw)} characters)"


def _exists(path: Path) -> bool:
    """``path.exists()``, with a path the OS refuses to look up (a name too long) answered as absent."""
    try:
        return path.exists()
    except OSError:
        return False


def resolve_request_path(raw: str, roots: list[Path]) -> Path:
    """The real path a request names: relative to a root (the first where it exists) or absolute inside one."""
    if not raw or "\x00" in raw or len(raw) > MAX_PATH_CHARS:
        raise ApiError(422, "invalid_path", f"path must be a non-empty string of at most {MAX_PATH_CHARS} "
                                            "characters without NUL bytes")
    if not roots:
        raise ApiError(403, "path_forbidden", "this server has no data roots configured for path requests")
    parts = PurePosixPath(raw).parts
    if ".." in parts:
        raise ApiError(403, "path_forbidden", f"path {shown(raw)}: '..' is not allowed")
    if any(len(os.fsencode(part)) > NAME_MAX_BYTES for part in parts):
        raise ApiError(404, "not_found", f"path {shown(raw)} does not exist (a name in it is over "
                                         f"{NAME_MAX_BYTES} bytes)")
    real_roots = [root.resolve() for root in roots]
    given = Path(raw)
    candidates = [given] if given.is_absolute() else [root / given for root in real_roots]
    existing = [c for c in candidates if _exists(c)]
    try:
        resolved = (existing or candidates)[0].resolve()
    except (OSError, RuntimeError):  # a symlink loop, or a path the OS cannot look up
        raise ApiError(404, "not_found", f"path {shown(raw)} cannot be looked up") from None
    if not _inside(resolved, real_roots):
        raise ApiError(403, "path_forbidden", f"path {shown(raw)} is outside the data roots")
    if not _exists(resolved):
        raise ApiError(404, "not_found", f"path {shown(raw)} does not exist")
    return resolved


def relative_to_roots(path: Path | str, roots: list[Path]) -> str:
    """How an answer shows a server path: relative to the data root it is in, else its name alone."""
    path = Path(path)
    if not path.is_absolute():
        return str(path)
    for root in roots:
        real = root.resolve()
        if path == real or path.is_relative_to(real):
            return str(path.relative_to(real)) or "."
    return path.name


def _is_regular(path: Path) -> bool:
    """A regular file (after symlinks): never a FIFO or a device, which would block or never end on reading."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def media_files(path: Path, roots: list[Path]) -> tuple[str, list[Path]]:
    """``("item", images)`` for a folder of shop images, ``("clip", [clip])`` for a clip or a folder holding one.

    Files are listed in natural order as the batch pipeline lists them; a
    file whose real location is outside the roots (a symlink) is refused, and
    what is not a regular file (a FIFO: opening it would block) is skipped.
    """
    real_roots = [root.resolve() for root in roots]
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if _is_regular(p) and not p.name.startswith(".")),
                       key=natural_key)
    elif _is_regular(path):
        files = [path]
    else:
        raise ApiError(422, "not_a_regular_file", f"{path.name} is neither a folder nor a regular file "
                                                  "(a FIFO, socket or device cannot be read as media)")
    for file in files:
        if not _inside(file.resolve(), real_roots):
            raise ApiError(403, "path_forbidden", f"{file.name} links outside the data roots")
    clips = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if clips and images:
        raise ApiError(422, "mixed_folder", f"{path.name} holds both clips and images: query one or the other")
    if len(clips) > 1:
        raise ApiError(422, "several_clips", f"{path.name} holds {len(clips)} clips: name one clip file")
    if clips:
        return "clip", clips
    if images:
        return "item", images
    raise ApiError(415, "unsupported_media_type",
                   f"{path.name}: no shop images ({', '.join(IMAGE_SUFFIXES)}) or clips ({', '.join(VIDEO_SUFFIXES)})")

