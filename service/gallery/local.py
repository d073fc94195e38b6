"""The local gallery backend (the default): box vectors in append-only FAISS segment files, their metadata in SQLite.

Layout of the data directory::

    gallery.sqlite             entries (one per item or clip), boxes (one per vector), meta
    segment-<generation>.faiss the vectors of a range of box ids (``service.segments``)

Crash safety comes from never overwriting a live file. A change writes the
vectors it adds (or, when ``service.segments.plan_tail`` says to merge, the
live vectors of a trailing run of segments) to a new segment file (temp file,
fsync, rename), then commits the metadata and the segment list
``meta.segments`` in one SQLite transaction (WAL, ``synchronous=FULL``).
That commit is the switch: a crash before it leaves the old list, the old
files and the old rows, and the new file is an orphan deleted at the next
start; a crash after it leaves the new state complete. Start-up loads the
listed segments and checks that they hold every box id in SQLite.

A change writes the boxes it adds, plus now and then a merge: a gallery of
hundreds of thousands of boxes no longer rewrites all of them per added
clip. Readers are never blocked, because requests search an immutable
in-memory ``Snapshot`` that is swapped after each commit.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from service.gallery.model import (KINDS, Entry, GalleryError, Kind, Side, Snapshot, SourceBoxes, change_sides,
                                   empty_snapshot, search_side, side_of, sources_of, table_of)
from service.segments import Segment, next_segments, plan_tail, read_segments, write_segment

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    kind TEXT NOT NULL, source_id TEXT NOT NULL, origin TEXT NOT NULL, pictures INTEGER NOT NULL,
    boxes INTEGER NOT NULL, added_at REAL NOT NULL, PRIMARY KEY (kind, source_id));
CREATE TABLE IF NOT EXISTS boxes (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, source_id TEXT NOT NULL, name TEXT NOT NULL, frame INTEGER NOT NULL,
    x1 INTEGER NOT NULL, y1 INTEGER NOT NULL, x2 INTEGER NOT NULL, y2 INTEGER NOT NULL, score REAL NOT NULL,
    grp INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS boxes_source ON boxes (kind, source_id);
"""


class GalleryStore:
    """Reads, changes and recovers the gallery in ``data_dir``; changes are serialised by a lock.

    One process owns the folder: ``current()`` is the last committed snapshot, which only this process changes.
    """

    backend = "local"

    def __init__(self, data_dir: Path | str, dim: int, models: dict, device: str = "cpu",
                 fresh: bool = False) -> None:
        """``fresh`` ignores what is stored (other models, another dimension): for ``replace_all``, which
        commits a new generation; until it does, the stored gallery stays as it was."""
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.uploads = self.data_dir / "uploads"
        """Where requests stage uploaded files; what a killed process left there is removed on opening."""
        shutil.rmtree(self.uploads, ignore_errors=True)
        self.uploads.mkdir()
        self.dim = dim
        self.models = json.dumps(models, sort_keys=True)
        self.device = device
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.data_dir / "gallery.sqlite", check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self.segments: list[Segment] = [] if fresh else self._stored_segments()
        self.snapshot = self._empty() if fresh else self._recover()
        self.on_change: Callable[[Snapshot], None] | None = None
        """Called with every newly committed snapshot (the service precomputes its votes); must return quickly."""

    def close(self) -> None:
        self._db.close()

    def current(self) -> Snapshot:
        """The newest committed generation: this process made every change, so the one it holds."""
        return self.snapshot

    def search(self, kind: Kind, vectors: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Exact nearest boxes of one kind: squared L2 distances and box ids, ``(len(vectors), k)`` each."""
        return search_side(self.snapshot.sides[kind], vectors, k)

    def export(self) -> Iterator[SourceBoxes]:
        """Every entry as the ``SourceBoxes`` that would add it again (for ``python -m service migrate``)."""
        snapshot = self.snapshot
        groups = dict(self._db.execute("SELECT id, grp FROM boxes"))
        return sources_of(snapshot, groups)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "location": self.data_dir.resolve().name, "segments": len(self.segments)}

    @staticmethod
    def stored_identity(data_dir: Path | str) -> tuple[int, dict] | None:
        """The vector dimension and models a gallery folder was built with; ``None`` when it holds none."""
        path = Path(data_dir) / "gallery.sqlite"
        if not path.is_file():
            return None
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta"))
        finally:
            db.close()
        if "models" not in meta or "segments" not in meta:
            return None
        segments = [Segment(**s) for s in json.loads(meta["segments"])]
        if not segments:
            return None
        import faiss

        return faiss.read_index(str(Path(data_dir) / segments[0].file)).d, json.loads(meta["models"])

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _empty(self) -> Snapshot:
        return empty_snapshot(int(self._meta("generation") or 0), self.dim, self.device)

    def _stored_segments(self) -> list[Segment]:
        """The committed segment list; a gallery written as one ``index_file`` reads as its only segment."""
        listed = self._meta("segments")
        if listed is not None:
            return [Segment(**s) for s in json.loads(listed)]
        legacy = self._meta("index_file")
        if legacy is None:
            return []
        total = self._db.execute("SELECT COUNT(*) FROM boxes").fetchone()[0]
        return [Segment(legacy, 0, total)]

    def _recover(self) -> Snapshot:
        """Load the committed generation, check it, and delete what a crashed change left behind."""
        generation = int(self._meta("generation") or 0)
        box_count = self._db.execute("SELECT COUNT(*) FROM boxes").fetchone()[0]
        stored_models = self._meta("models")
        if stored_models is not None and stored_models != self.models and box_count:
            raise GalleryError(f"{self.data_dir}: the gallery was built with other models "
                               f"({stored_models}); rebuild it (python -m service rebuild)")
        self._remove_orphans()
        try:
            ids, vectors = read_segments(self.data_dir, self.segments, self.dim)
        except (OSError, ValueError) as exc:
            raise GalleryError(str(exc)) from exc
        db_ids = np.asarray([r[0] for r in self._db.execute("SELECT id FROM boxes ORDER BY id")], np.int64)
        missing = np.setdiff1d(db_ids, ids)
        if len(missing) or len(np.unique(ids)) != len(ids):
            raise GalleryError(f"{self.data_dir}: the segments lack {len(missing)} of the {len(db_ids)} boxes in "
                               f"the metadata or repeat an id; the data directory was changed from outside")
        return self._snapshot(generation, ids, vectors)

    def _remove_orphans(self) -> None:
        """Delete vector files no committed segment names: a crashed change's, or ones a merge replaced."""
        listed = {s.file for s in self.segments}
        for pattern in ("segment-*.faiss*", "index-*.faiss*"):
            for leftover in self.data_dir.glob(pattern):
                if leftover.name not in listed:
                    leftover.unlink(missing_ok=True)

    def _entries(self) -> dict[tuple[str, str], Entry]:
        return {(k, s): Entry(k, s, o, p, b, t) for k, s, o, p, b, t in self._db.execute(
            "SELECT kind, source_id, origin, pictures, boxes, added_at FROM entries")}

    def _snapshot(self, generation: int, ids: np.ndarray, vectors: np.ndarray) -> Snapshot:
        """The committed gallery read back from SQLite, given the segments' ids and vectors (at start-up)."""
        entries = self._entries()
        order = {int(i): n for n, i in enumerate(ids)}
        sides = {}
        for kind in KINDS:
            rows = self._db.execute("SELECT id, source_id, name, frame, x1, y1, x2, y2, score FROM boxes "
                                    "WHERE kind = ? ORDER BY id", (kind,)).fetchall()
            box_ids = np.asarray([r[0] for r in rows], np.int64)
            stored = vectors[[order[int(i)] for i in box_ids]] if len(rows) else np.zeros((0, self.dim), np.float32)
            table = table_of((r[1] for r in rows), (r[8] for r in rows), (r[3] for r in rows),
                             (r[4:8] for r in rows), (r[2] for r in rows), stored)  # stored unit-norm
            sides[kind] = side_of(table, box_ids, self.dim, self.device)
        return Snapshot(generation, self.dim, entries, sides)

    def put(self, sources: list[SourceBoxes]) -> Snapshot:
        """Add entries, replacing any with the same kind and id, in one atomic change."""
        return self.upsert(sources)[0]

    def upsert(self, sources: list[SourceBoxes]) -> tuple[Snapshot, set[tuple[str, str]]]:
        """``put``, and which of the keys it replaced: decided under the lock the change commits under, so of
        two concurrent puts of one new id one adds and the other replaces."""
        keys = {(s.kind, s.source_id) for s in sources}
        with self._lock:
            replaced = keys & self.snapshot.entries.keys()
            return self._change(keys, sources), replaced

    def delete(self, kind: Kind, source_id: str) -> Entry:
        """Remove one entry; ``KeyError`` when it is not in the gallery (checked under the change's lock)."""
        with self._lock:
            entry = self.snapshot.entries.get((kind, source_id))
            if entry is None:
                raise KeyError((kind, source_id))
            self._change({(kind, source_id)}, [])
        return entry

    def replace_all(self, sources: list[SourceBoxes]) -> Snapshot:
        """Make the gallery exactly ``sources`` (a rebuild), in one atomic change."""
        with self._lock:
            return self._change(None, sources)

    def _change(self, removed: set[tuple[str, str]] | None, added: list[SourceBoxes]) -> Snapshot:
        """One atomic change; the caller holds ``_lock``."""
        old = self.snapshot
        next_id = int(self._meta("next_id") or 0)
        new_ids = np.arange(next_id, next_id + sum(len(s.boxes) for s in added), dtype=np.int64)
        next_id += len(new_ids)
        sides = change_sides(old, removed, added, new_ids, self.device)
        generation = old.generation + 1
        # replace_all starts from no segments: every old vector dies
        segments = self._next_segments(generation, sides, new_ids, [] if removed is None else self.segments)
        try:
            self._commit(removed, added, new_ids, generation, segments, next_id)
        except BaseException:
            for written in set(segments) - set(self.segments):  # only this change's file: a fresh
                (self.data_dir / written.file).unlink(missing_ok=True)  # store's list omits committed ones
            raise
        self.segments = segments
        self.snapshot = Snapshot(generation, self.dim, self._entries(), sides)
        if self.on_change is not None:
            self.on_change(self.snapshot)
        self._remove_orphans()
        return self.snapshot

    def _next_segments(self, generation: int, sides: dict[str, Side], new_ids: np.ndarray,
                       base: list[Segment]) -> list[Segment]:
        """Write this change's segment, if it needs one; the segment list to commit, starting from ``base``."""
        live_ids = np.concatenate([side.box_ids for side in sides.values()])
        start = plan_tail(base, live_ids, new_ids)
        written = None
        if start is not None:
            tail = [(side.box_ids >= start, side) for side in sides.values()]
            ids = np.concatenate([side.box_ids[mask] for mask, side in tail])
            written = Segment(f"segment-{generation:08d}.faiss", start, len(ids))
            write_segment(self.data_dir / written.file, ids,
                          np.concatenate([side.index.vectors[mask] for mask, side in tail]))
        return next_segments(base, written, len(live_ids))

    def _commit(self, removed: set[tuple[str, str]] | None, added: list[SourceBoxes], ids: np.ndarray,
                generation: int, segments: list[Segment], next_id: int) -> None:
        """The switch to the new generation: metadata and segment list in one transaction."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if removed is None:
                db.execute("DELETE FROM entries")
                db.execute("DELETE FROM boxes")
            for kind, source_id in removed or ():
                db.execute("DELETE FROM entries WHERE kind = ? AND source_id = ?", (kind, source_id))
                db.execute("DELETE FROM boxes WHERE kind = ? AND source_id = ?", (kind, source_id))
            now = time.time()
            position = 0
            for source in added:
                db.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                           (source.kind, source.source_id, source.origin, source.pictures, len(source.boxes), now))
                db.executemany("INSERT INTO boxes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                    (int(ids[position + n]), source.kind, source.source_id, name, int(frame), *map(int, box),
                     float(score), int(group))
                    for n, (name, frame, box, score, group) in enumerate(
                        zip(source.names, source.frames, source.boxes, source.scores, source.groups))])
                position += len(source.boxes)
            meta = {"generation": str(generation), "next_id": str(next_id), "models": self.models,
                    "segments": json.dumps([s.to_json() for s in segments])}
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
            db.execute("DELETE FROM meta WHERE key = 'index_file'")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
