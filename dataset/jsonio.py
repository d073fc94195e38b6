"""Atomic file writing: a crash mid-write leaves the previous file intact."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process umask (read by setting and restoring it), so replaced files get normal permissions."""
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is fsynced and renamed over ``path``.

    The temp file lives in the same folder so the rename is atomic on one
    file system; on any exception it is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path | str, data: Any, indent: int | None = None) -> Path:
    """Serialise ``data`` as UTF-8 JSON into ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=indent)
    return Path(path)


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts: the key of a cached stage output."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_stamp(path: Path | str | None) -> list | None:
    """Resolved path, size and modification time: enough to notice a replaced weights file without hashing it."""
    if path is None:
        return None
    path = Path(path)
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def file_digest(path: Path | str | None) -> str | None:
    """The first 16 hex digits of a file's SHA-256: an identity that survives a copy (a container's models),
    where ``file_stamp`` is a cheap cache key that a copy changes."""
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:16]
