"""What every gallery backend shares: the entry and snapshot types, the one interface, and the in-memory change.

A backend keeps the gallery durable (``local``: FAISS segment files +
SQLite in one process's data folder; ``milvus``: collections in a Milvus
server that several service replicas share). Every backend hands the
matcher the same ``Snapshot``: an immutable view of one committed
generation, whose tables and exact indexes the voting reads. A change
builds the next snapshot from the previous one in memory (``change_sides``),
so both backends derive it with the same code.
"""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from metric_sub.index import GalleryIndex, IndexConfig, unit_rows
from metric_sub.vote import BoxTable

Kind = Literal["item", "clip"]
KINDS: tuple[Kind, ...] = ("item", "clip")


class GalleryError(Exception):
    """The gallery cannot be used as it is (built with other models, damaged from outside, misconfigured)."""


class GalleryUnavailable(GalleryError):
    """The gallery's server cannot be reached or refused a request: retry later (the service answers 503)."""


class GalleryReadOnly(GalleryError):
    """This replica is not the gallery's writer (``gallery.writer: false``): the service answers 409."""


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
        return table_of([self.source_id] * len(self.boxes), self.scores, self.frames, self.boxes, self.names,
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


class Gallery(Protocol):
    """The gallery as the service, ``rebuild`` and ``migrate`` use it; ``local`` and ``milvus`` implement it.

    Every change is atomic from a reader's point of view and makes a new
    generation; ``current()`` answers the newest committed one (for a shared
    backend, including other processes' changes), ``snapshot`` the one this
    process loaded last, without asking anyone.
    """

    backend: str
    dim: int
    uploads: Path
    snapshot: Snapshot
    on_change: Callable[[Snapshot], None] | None

    def current(self) -> Snapshot: ...

    def put(self, sources: list[SourceBoxes]) -> Snapshot: ...

    def upsert(self, sources: list[SourceBoxes]) -> tuple[Snapshot, set[tuple[str, str]]]: ...

    def delete(self, kind: Kind, source_id: str) -> Entry: ...

    def replace_all(self, sources: list[SourceBoxes]) -> Snapshot: ...

    def search(self, kind: Kind, vectors: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]: ...

    def export(self) -> Iterator[SourceBoxes]: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def table_of(sources: Iterable[str], scores: Iterable[float], frames: Iterable[int],
             boxes: Iterable[Iterable[int]], names: Iterable[str], vectors: np.ndarray) -> BoxTable:
    box_array = np.asarray([list(b) for b in boxes], np.int64).reshape(-1, 4)
    return BoxTable(np.asarray(list(sources), dtype=object).astype(str), np.asarray(list(scores), np.float64),
                    np.asarray(list(frames), np.int64), box_array, np.asarray(list(names), dtype=object).astype(str),
                    vectors)


def empty_snapshot(generation: int, dim: int, device: str) -> Snapshot:
    empty = GalleryIndex(dim, IndexConfig(), device)
    side = Side(table_of([], [], [], [], [], empty.vectors), empty, np.zeros(0, np.int64))
    return Snapshot(generation, dim, {}, {kind: side for kind in KINDS})


def side_of(table: BoxTable, box_ids: np.ndarray, dim: int, device: str) -> Side:
    """A side from a table of unit vectors ordered by ascending box id; the index's ids are table rows."""
    index = GalleryIndex(dim, IndexConfig(), device)
    if len(box_ids):  # every row unit-norm already, and ``table.vectors`` an array the index may keep
        index.add(table.vectors, np.arange(len(box_ids), dtype=np.int64), unit=True)
    # The index's ids are table rows, so its unit vectors serve the table too (no second copy).
    return Side(dataclasses.replace(table, vectors=index.vectors), index, np.asarray(box_ids, np.int64))


def next_side(side: Side, keep: np.ndarray, added: list[SourceBoxes], ids: list[np.ndarray], dim: int,
              device: str) -> Side:
    """``side`` without the dropped rows, the added entries' boxes (with their new ``ids``) after them.

    The same side a backend reads back from what it committed (tested),
    built from the previous snapshot in memory: reading every box back cost
    most of a change's time on large galleries.
    """
    kept = side.table if keep.all() else side.table.take(keep)  # tables are immutable: share when whole
    fresh = [dataclasses.replace(t, vectors=unit_rows(t.vectors)) for t in (s.table() for s in added)]
    return side_of(BoxTable.join([kept, *fresh]), np.concatenate([side.box_ids[keep], *ids]), dim, device)


def change_sides(old: Snapshot, removed: set[tuple[str, str]] | None, added: list[SourceBoxes],
                 new_ids: np.ndarray, device: str) -> dict[str, Side]:
    """The sides after removing the ``removed`` entries (``None``: all) and adding ``added`` with ``new_ids``
    (ascending, one per added box in order, above every id in ``old``)."""
    ids_of = np.split(new_ids, np.cumsum([len(s.boxes) for s in added])[:-1]) if added else []
    sides = {}
    for kind in KINDS:
        source = old.sides[kind].table.source
        gone = [s for k, s in removed or () if k == kind]
        keep = np.zeros(len(source), bool) if removed is None else ~np.isin(source, gone)
        sides[kind] = next_side(old.sides[kind], keep, [s for s in added if s.kind == kind],
                                [i for s, i in zip(added, ids_of) if s.kind == kind], old.dim, device)
    return sides


def search_side(side: Side, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact search of one side: squared L2 distances and box ids (``inf`` / -1 where it is short)."""
    distances, rows = side.index.search(vectors, k)
    return distances, np.where(rows >= 0, side.box_ids[np.maximum(rows, 0)] if len(side) else -1, -1)


def sources_of(snapshot: Snapshot, groups: dict[int, int] | None = None) -> Iterator[SourceBoxes]:
    """Every entry of a snapshot as the ``SourceBoxes`` that would add it again (vectors unit-norm);
    ``groups`` maps box ids to their aspect group (0 where absent)."""
    for kind in KINDS:
        side = snapshot.sides[kind]
        for source_id, rows in side.table.rows_of.items():
            entry = snapshot.entries[(kind, source_id)]
            table = side.table
            ids = side.box_ids[rows]
            yield SourceBoxes(kind, source_id, entry.origin, np.ascontiguousarray(table.vectors[rows]),
                              [str(n) for n in table.name[rows]], [int(f) for f in table.frame[rows]],
                              [tuple(int(v) for v in b) for b in table.box[rows]],
                              [float(s) for s in table.score[rows]],
                              [int((groups or {}).get(int(i), 0)) for i in ids], entry.pictures)
        for (entry_kind, source_id), entry in snapshot.entries.items():  # entries without boxes
            if entry_kind == kind and entry.boxes == 0:
                yield SourceBoxes(kind, source_id, entry.origin, np.zeros((0, snapshot.dim), np.float32), [], [],
                                  [], [], [], entry.pictures)
