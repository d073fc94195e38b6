"""Each encoded source's boxes and vectors, written together in one file, so a killed run resumes per source.

``OUT/sources/<key>.npz`` holds one source: ``vectors`` (float32, one unit row per box) and ``meta`` (its
refs, detector records, issues and missing frames as JSON). The key covers everything the vectors depend on:
the source's files (path, size, modification time), the frames sampled or boxes given, the detector's config
and weights, and each embedder's network, weights and precision. A file is renamed into place when complete,
so a crash leaves either the whole source or nothing.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dataset.errors import Issue
from dataset.jsonio import digest, file_stamp
from metric_sub.data import CropRef
from pipeline.source import EncodedSource, Source


def _ref(row: dict[str, Any]) -> CropRef:
    return CropRef(row["kind"], row["source_id"], row["path"], row["frame"], tuple(row["box"]), row["group"],
                   row["instance_id"], row["score"])


class SourceStore:
    """The finished sources of a run's output folder, keyed by what their vectors depend on."""

    def __init__(self, folder: Path | str, models: Any) -> None:
        self.folder = Path(folder)
        self.models = models

    def key(self, source: Source) -> str:
        stamps = []
        for path in source.files:
            try:
                stamps.append(file_stamp(path))
            except OSError:
                stamps.append([path, None])  # unreadable now: the read says why
        return digest(source.describe(), stamps, self.models)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def save(self, key: str, encoded: EncodedSource) -> None:
        meta = {"refs": [r.to_json() for r in encoded.refs], "records": encoded.records,
                "issues": [vars(i) for i in encoded.issues], "missing": encoded.missing,
                "pictures": encoded.pictures}
        buffer = io.BytesIO()
        np.savez(buffer, vectors=np.asarray(encoded.vectors, np.float32),
                 meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(key)
        partial = target.with_name(target.name + ".partial")
        with open(partial, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(target)

    def load(self, key: str, source: Source) -> EncodedSource:
        with np.load(self.path(key)) as stored:
            vectors = stored["vectors"]
            meta = json.loads(stored["meta"].tobytes())
        return EncodedSource(source, [_ref(r) for r in meta["refs"]], vectors, meta["records"],
                             [Issue(**i) for i in meta["issues"]], meta["missing"], meta["pictures"])

    def finished(self, keys: Sequence[str]) -> int:
        """How many of ``keys`` are already written."""
        return sum(self.has(k) for k in keys)
