"""Confining request paths to the configured data roots.

A path from a request is a claim made by a client: it may contain ``..``,
point anywhere on the machine, or pass through a symlink that leads out of a
root. Every path is therefore resolved (symlinks followed) and must land
inside a root, and so must every file read from a folder. Refusals are 403
and do not reveal whether the refused target exists; a missing target inside
a root is 404.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from dataset.layout import IMAGE_SUFFIXES, VIDEO_SUFFIXES, natural_key
from service.errors import ApiError


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def resolve_request_path(raw: str, roots: list[Path]) -> Path:
    """The real path a request names: relative to a root (the first where it exists) or absolute inside one."""
    if not raw or "\x00" in raw:
        raise ApiError(422, "invalid_path", "path must be a non-empty string without NUL bytes")
    if not roots:
        raise ApiError(403, "path_forbidden", "this server has no data roots configured for path requests")
    if ".." in PurePosixPath(raw).parts:
        raise ApiError(403, "path_forbidden", f"path {raw!r}: '..' is not allowed")
    real_roots = [root.resolve() for root in roots]
    given = Path(raw)
    candidates = [given] if given.is_absolute() else [root / given for root in real_roots]
    existing = [c for c in candidates if c.exists()]
    resolved = (existing or candidates)[0].resolve()
    if not _inside(resolved, real_roots):
        raise ApiError(403, "path_forbidden", f"path {raw!r} is outside the data roots")
    if not resolved.exists():
        raise ApiError(404, "not_found", f"path {raw!r} does not exist")
    return resolved


def media_files(path: Path, roots: list[Path]) -> tuple[str, list[Path]]:
    """``("item", images)`` for a folder of shop images, ``("clip", [clip])`` for a clip or a folder holding one.

    Files are listed in natural order as the batch pipeline lists them; a
    file whose real location is outside the roots (a symlink) is refused.
    """
    real_roots = [root.resolve() for root in roots]
    if path.is_file():
        files = [path]
    else:
        files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")), key=natural_key)
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

