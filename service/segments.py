"""The gallery's vectors on disk as append-only segment files, merged like a binary counter.

Box ids only grow, so a segment is a range of ids: it holds the vectors of
the boxes added from its ``first_id`` up to the next segment's. A change
writes one new segment and never rewrites the others, except when
``plan_tail`` says to merge: the new segment takes over every trailing
segment not larger than itself (one, two, four, ... additions' worth), so a
gallery built one entry at a time keeps O(log n) files and each vector is
rewritten O(log n) times over its life, instead of every vector on every
change. Deleted boxes stay in their segment as dead vectors until dead ones
outnumber live ones; then the whole gallery is written as one segment.

A segment file is a FAISS ``IndexIDMap2`` over ``IndexFlatIP`` whose ids are
box ids; which ids are live is the metadata's business (SQLite).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np


@dataclass(frozen=True)
class Segment:
    file: str
    first_id: int
    count: int

    def to_json(self) -> dict:
        return asdict(self)


def plan_tail(segments: list[Segment], live_ids: np.ndarray, new_ids: np.ndarray) -> int | None:
    """The first box id of the segment this change writes, or ``None`` when it writes none.

    ``segments`` are the committed ones with the change's deletions already
    dead in them, ``live_ids`` every box id live after the change, ``new_ids``
    the ascending ids of the boxes it adds. The new segment holds every live
    id from the answer on and replaces every segment starting there.
    """
    stored = sum(s.count for s in segments) + len(new_ids)
    if len(live_ids) and stored > 2 * len(live_ids):
        return 0
    if not len(new_ids):
        return None
    start, size = int(new_ids[0]), len(new_ids)
    for segment in reversed(segments):
        if segment.count > size:
            break
        start = segment.first_id
        size = int(np.count_nonzero(live_ids >= start))
    return start


def next_segments(segments: list[Segment], written: Segment | None, live: int) -> list[Segment]:
    """The segment list after a change that wrote ``written`` (see ``plan_tail``) and leaves ``live`` boxes."""
    if live == 0:
        return []
    if written is None:
        return list(segments)
    return [s for s in segments if s.first_id < written.first_id] + [written]


def write_segment(path: Path, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Write, sync and rename into place: a reader or a crash sees the whole file or none."""
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(ids, np.int64))
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_segments(folder: Path, segments: list[Segment], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Every stored id and vector of the segments, dead ones included; a missing or foreign file is an error."""
    ids, vectors = [np.zeros(0, np.int64)], [np.zeros((0, dim), np.float32)]
    for segment in segments:
        path = folder / segment.file
        if not path.is_file():
            raise FileNotFoundError(f"{path}: a committed gallery segment is missing")
        index = faiss.read_index(str(path))
        if index.d != dim:
            raise ValueError(f"{path}: vectors of dimension {index.d}, the models give {dim}")
        if index.ntotal != segment.count:
            raise ValueError(f"{path}: {index.ntotal} vectors, the metadata says {segment.count}")
        ids.append(faiss.vector_to_array(index.id_map).astype(np.int64))
        vectors.append(index.index.reconstruct_n(0, index.ntotal) if index.ntotal else vectors[0])
    return np.concatenate(ids), np.concatenate(vectors)
