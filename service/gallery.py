"""The persistent gallery: box vectors in a FAISS index file, their metadata in SQLite.

Layout of the data directory::

    gallery.sqlite            entries (one per item or clip), boxes (one per vector), meta
    index-<generation>.faiss  every vector, keyed by the box id (IndexIDMap2 over IndexFlatIP)

Crash safety comes from never overwriting the live index file. A change
writes the complete new vector set to a new ``index-<g+1>.faiss`` (temp file,
fsync, rename), then commits the metadata and the pointer ``meta.index_file``
in one SQLite transaction (WAL, ``synchronous=FULL``). That commit is the
switch: a crash before it leaves the old pointer, the old file and the old
rows, and the new file is an orphan deleted at the next start; a crash
after it leaves the new state complete. Start-up loads the file the pointer
names and checks that its ids are exactly the box ids in SQLite.

Rewriting every vector per change costs O(gallery) per add, which is
milliseconds up to some hundred thousand boxes; readers are never blocked,
because requests search an immutable in-memory ``Snapshot`` that is swapped
after each commit.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from metric_sub.index import GalleryIndex, IndexConfig
from metric_sub.vote import BoxTable

Kind = Literal["item", "clip"]
KINDS: tuple[Kind, ...] = ("item", "clip")

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


class GalleryError(Exception):
    """The data directory cannot be used as it is (built with other models, or damaged from outside)."""


@dataclass(frozen=True)
class SourceBoxes:
    """An item or clip after detection and embedding: one vector per detected box.

    ``names`` are shop image names without extension (empty for clips),
    ``frames`` frame indices (-1 for images); ``pictures`` counts the images
    or frames looked at, ``skipped`` the files that could not be read.
    """

    kind: Kind
    source_id: str
    origin: str
    vectors: np.ndarray
    names: list[str]
    frames: list[int]
    boxes: list[tuple[int, int, int, int]]
    scores: list[float]
    groups: list[int]
    pictures: int
    skipped: list[str] = field(default_factory=list)

    def table(self) -> BoxTable:
        return _table([self.source_id] * len(self.boxes), self.scores, self.frames, self.boxes, self.names,
                      self.vectors)


@dataclass(frozen=True)
class Entry:
    kind: Kind
    source_id: str
    origin: str
    pictures: int
    boxes: int
    added_at: float

    def to_json(self) -> dict:
        return {"kind": self.kind, "id": self.source_id, "origin": self.origin, "pictures": self.pictures,
                "boxes": self.boxes, "added_at": self.added_at}


@dataclass(frozen=True)
class Side:
    """One kind's boxes: the table the voting reads and an index whose ids are table rows."""

    table: BoxTable
    index: GalleryIndex
    box_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.box_ids)


@dataclass
class Snapshot:
    """The gallery as of one generation; never changed, replaced whole after a commit.

    ``cache`` holds values derived from this generation alone (the voting of
    the indexed entries against each other), filled by the matcher on first use.
    """

    generation: int
    dim: int
    entries: dict[tuple[str, str], Entry]
    sides: dict[str, Side]
    cache: dict = field(default_factory=dict)
    cache_lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: Kind) -> int:
        return sum(1 for k, _ in self.entries if k == kind)


def _table(sources: Iterable[str], scores: Iterable[float], frames: Iterable[int],
           boxes: Iterable[Iterable[int]], names: Iterable[str], vectors: np.ndarray) -> BoxTable:
    box_array = np.asarray([list(b) for b in boxes], np.int64).reshape(-1, 4)
    return BoxTable(np.asarray(list(sources), dtype=object).astype(str), np.asarray(list(scores), np.float64),
                    np.asarray(list(frames), np.int64), box_array, np.asarray(list(names), dtype=object).astype(str),
                    vectors)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class GalleryStore:
    """Reads, changes and recovers the gallery in ``data_dir``; changes are serialised by a lock."""

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
        self.snapshot = self._empty() if fresh else self._recover()
        self.on_change: Callable[[Snapshot], None] | None = None
        """Called with every newly committed snapshot (the service precomputes its votes); must return quickly."""

    def close(self) -> None:
        self._db.close()

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _empty(self) -> Snapshot:
        empty = GalleryIndex(self.dim, IndexConfig(), self.device)
        side = Side(_table([], [], [], [], [], empty.vectors), empty, np.zeros(0, np.int64))
        return Snapshot(int(self._meta("generation") or 0), self.dim, {}, {kind: side for kind in KINDS})

    def _recover(self) -> Snapshot:
        """Load the committed generation, check it, and delete what a crashed change left behind."""
        generation = int(self._meta("generation") or 0)
        index_file = self._meta("index_file")
        box_count = self._db.execute("SELECT COUNT(*) FROM boxes").fetchone()[0]
        stored_models = self._meta("models")
        if stored_models is not None and stored_models != self.models and box_count:
            raise GalleryError(f"{self.data_dir}: the gallery was built with other models "
                               f"({stored_models}); rebuild it (python -m service rebuild)")
        for leftover in self.data_dir.glob("index-*.faiss*"):
            if leftover.name != index_file:
                leftover.unlink()
        ids = np.zeros(0, np.int64)
        vectors = np.zeros((0, self.dim), np.float32)
        if index_file is not None:
            path = self.data_dir / index_file
            if not path.is_file():
                raise GalleryError(f"{path}: the committed index file is missing")
            index = faiss.read_index(str(path))
            if index.d != self.dim:
                raise GalleryError(f"{path}: vectors of dimension {index.d}, the models give {self.dim}")
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            vectors = index.index.reconstruct_n(0, index.ntotal) if index.ntotal else vectors
        db_ids = np.asarray([r[0] for r in self._db.execute("SELECT id FROM boxes ORDER BY id")], np.int64)
        if not np.array_equal(np.sort(ids), db_ids):
            raise GalleryError(f"{self.data_dir}: index file {index_file} holds {len(ids)} vectors but the "
                               f"metadata {len(db_ids)} boxes; the data directory was changed from outside")
        return self._snapshot(generation, ids, vectors)

    def _entries(self) -> dict[tuple[str, str], Entry]:
        return {(k, s): Entry(k, s, o, p, b, t) for k, s, o, p, b, t in self._db.execute(
            "SELECT kind, source_id, origin, pictures, boxes, added_at FROM entries")}

    def _snapshot(self, generation: int, ids: np.ndarray, vectors: np.ndarray) -> Snapshot:
        """The committed gallery read back from SQLite, given the index file's ids and vectors (at start-up)."""
        entries = self._entries()
        order = {int(i): n for n, i in enumerate(ids)}
        sides = {}
        for kind in KINDS:
            rows = self._db.execute("SELECT id, source_id, name, frame, x1, y1, x2, y2, score FROM boxes "
                                    "WHERE kind = ? ORDER BY id", (kind,)).fetchall()
            box_ids = np.asarray([r[0] for r in rows], np.int64)
            index = GalleryIndex(self.dim, IndexConfig(), self.device)
            if len(rows):
                index.add(vectors[[order[int(i)] for i in box_ids]], np.arange(len(rows), dtype=np.int64))
            # The index's ids are table rows, so its unit vectors serve the table too (no second copy).
            table = _table((r[1] for r in rows), (r[8] for r in rows), (r[3] for r in rows),
                           (r[4:8] for r in rows), (r[2] for r in rows), index.vectors)
            sides[kind] = Side(table, index, box_ids)
        return Snapshot(generation, self.dim, entries, sides)

    def _next_side(self, side: Side, keep: np.ndarray, added: list[SourceBoxes], ids: list[np.ndarray]) -> Side:
        """``side`` without the dropped rows, the added entries' boxes (with their new ``ids``) after them.

        The same side ``_snapshot`` reads back from the committed files (tested),
        built from the previous snapshot in memory: reading every box back
        from SQLite cost most of a change's time on large galleries.
        """
        joined = BoxTable.join([side.table.take(keep), *(s.table() for s in added)])
        box_ids = np.concatenate([side.box_ids[keep], *ids])
        index = GalleryIndex(self.dim, IndexConfig(), self.device)
        if len(box_ids):
            index.add(joined.vectors, np.arange(len(box_ids), dtype=np.int64))
        # The index's ids are table rows, so its unit vectors serve the table too (no second copy).
        return Side(dataclasses.replace(joined, vectors=index.vectors), index, box_ids)

    def put(self, sources: list[SourceBoxes]) -> Snapshot:
        """Add entries, replacing any with the same kind and id, in one atomic change."""
        return self._change({(s.kind, s.source_id) for s in sources}, sources)

    def delete(self, kind: Kind, source_id: str) -> Entry:
        """Remove one entry; ``KeyError`` when it is not in the gallery."""
        with self._lock:
            entry = self.snapshot.entries.get((kind, source_id))
        if entry is None:
            raise KeyError((kind, source_id))
        self._change({(kind, source_id)}, [])
        return entry

    def replace_all(self, sources: list[SourceBoxes]) -> Snapshot:
        """Make the gallery exactly ``sources`` (a rebuild), in one atomic change."""
        return self._change(None, sources)

    def _change(self, removed: set[tuple[str, str]] | None, added: list[SourceBoxes]) -> Snapshot:
        with self._lock:
            old = self.snapshot
            keeps = {}
            for kind in KINDS:
                gone = [s for k, s in removed or () if k == kind]
                source = old.sides[kind].table.source
                keeps[kind] = np.zeros(len(source), bool) if removed is None else ~np.isin(source, gone)
            next_id = int(self._meta("next_id") or 0)
            new_ids = np.arange(next_id, next_id + sum(len(s.boxes) for s in added), dtype=np.int64)
            next_id += len(new_ids)
            ids_of = np.split(new_ids, np.cumsum([len(s.boxes) for s in added])[:-1]) if added else []
            sides = {kind: self._next_side(old.sides[kind], keeps[kind],
                                           [s for s in added if s.kind == kind],
                                           [i for s, i in zip(added, ids_of) if s.kind == kind])
                     for kind in KINDS}
            generation = old.generation + 1
            index_file = self._write_index(generation, sides) if any(len(side) for side in sides.values()) else None
            try:
                self._commit(removed, added, new_ids, generation, index_file, next_id)
            except BaseException:
                if index_file is not None:
                    (self.data_dir / index_file).unlink(missing_ok=True)
                raise
            self.snapshot = Snapshot(generation, self.dim, self._entries(), sides)
            if self.on_change is not None:
                self.on_change(self.snapshot)
            for leftover in self.data_dir.glob("index-*.faiss"):
                if leftover.name != index_file:
                    leftover.unlink(missing_ok=True)
            return self.snapshot

    def _write_index(self, generation: int, sides: dict[str, Side]) -> str:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        for side in sides.values():
            index.add_with_ids(np.ascontiguousarray(side.index.vectors, np.float32),
                               np.ascontiguousarray(side.box_ids, np.int64))
        name = f"index-{generation:08d}.faiss"
        tmp = self.data_dir / f"{name}.tmp"
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(self.data_dir / name)
        _fsync_dir(self.data_dir)
        return name

    def _commit(self, removed: set[tuple[str, str]] | None, added: list[SourceBoxes], ids: np.ndarray,
                generation: int, index_file: str | None, next_id: int) -> None:
        """The switch to the new generation: metadata and index pointer in one transaction."""
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
            meta = {"generation": str(generation), "next_id": str(next_id), "models": self.models}
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
            if index_file is None:
                db.execute("DELETE FROM meta WHERE key = 'index_file'")
            else:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('index_file', ?)", (index_file,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
