"""One contract for every gallery backend: the same tests run against the local store and against a real Milvus
standalone server on 127.0.0.1 (``milvus_server`` in conftest.py, one per session; a collection per test).

What any backend must do: changes read back whole after a reopen, a replaced or deleted entry's boxes never come
back (not from a second process's view at Bounded consistency either), search equals exact search on small data,
a reader never sees half a replacement, the gallery's votes derived change by change equal the votes from scratch,
and a writer killed with SIGKILL mid-change leaves one whole generation. Milvus alone: the server stopped, or
killed mid-write, and restarted keeps a whole generation.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from metric_sub.match import load_match_config
from service.gallery import Gallery, GalleryReadOnly, GalleryStore, Snapshot, SourceBoxes
from service.matcher import GalleryMatcher
from service.settings import GallerySettings
from support import kill_writer_mid_change, lines_until
from test_service_crash import _assert_same, _expected, change
from test_service_units import DIM, MODELS, REPO, _source

WRITER = """
import sys
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
from test_gallery_contract import open_backend
from test_service_crash import change
store = open_backend({backend!r}, {folder!r}, {uri!r}, {collection!r})
first = store.snapshot.generation + 1
for step in range(first, first + {changes}):
    change(store, step)
    print(store.snapshot.generation, flush=True)
import time
time.sleep(600)  # idle until killed: the kill must find the writer alive
"""


def open_backend(backend: str, folder: str, uri: str, collection: str, **options) -> Gallery:
    """A gallery of ``backend``: the local store in ``folder``, or Milvus collection ``collection`` at ``uri``."""
    if backend == "local":
        return GalleryStore(folder, DIM, MODELS)
    from service.gallery.milvus import MilvusGallery

    config = GallerySettings(backend="milvus", uri=uri, collection=collection, **options)
    return MilvusGallery(config, dim=DIM, models=MODELS, scratch_dir=folder)


class Backend:
    """Opens galleries of one backend on one place (folder or collection) for a test."""

    def __init__(self, name: str, folder: Path, server=None) -> None:
        self.name, self.folder, self.server = name, folder, server
        self.collection = f"t_{uuid.uuid4().hex[:12]}"
        self.opened: list[Gallery] = []

    @property
    def uri(self) -> str:
        return self.server.uri if self.server else ""

    def open(self, **options) -> Gallery:
        gallery = open_backend(self.name, str(self.folder / "gallery"), self.uri, self.collection, **options)
        self.opened.append(gallery)
        return gallery

    def close_all(self) -> None:
        for gallery in self.opened:
            gallery.close()


@pytest.fixture(params=["local", "milvus"])
def backend(request: pytest.FixtureRequest, tmp_path: Path):
    server = request.getfixturevalue("milvus_server") if request.param == "milvus" else None
    opened = Backend(request.param, tmp_path, server)
    yield opened
    opened.close_all()


def _rows(snapshot: Snapshot) -> dict[str, tuple]:
    """A snapshot as plain values: entries, and per side the box ids, sources, boxes, frames and names (vectors:
    ``_same_vectors``)."""
    return {"generation": snapshot.generation, "entries": snapshot.entries,
            **{kind: (side.box_ids.tolist(), side.table.source.tolist(), side.table.box.tolist(),
                      side.table.frame.tolist(), side.table.name.tolist())
               for kind, side in snapshot.sides.items()}}


def _same(a: Snapshot, b: Snapshot) -> None:
    assert _rows(a) == _rows(b)
    for kind in a.sides:
        np.testing.assert_allclose(a.sides[kind].index.vectors, b.sides[kind].index.vectors, atol=1e-6)


def test_changes_read_back_whole(backend: Backend) -> None:
    store = backend.open()
    snapshot, replaced = store.upsert([_source("item", "i1", 2, 1), _source("clip", "c1", 3, 2),
                                       _source("item", "i2", 4, 3)])
    assert replaced == set() and snapshot.generation == 1
    snapshot, replaced = store.upsert([_source("clip", "c2", 5, 4), _source("item", "i1", 3, 5)])
    assert replaced == {("item", "i1")}
    assert store.delete("clip", "c1").boxes == 3
    with pytest.raises(KeyError):
        store.delete("clip", "c1")
    store.put([_source("clip", "c3", 2, 6), _source("clip", "empty", 0, 7)])
    built = store.current()
    assert built.generation == 4 and sorted(built.entries) == [("clip", "c2"), ("clip", "c3"), ("clip", "empty"),
                                                              ("item", "i1"), ("item", "i2")]
    assert list(built.sides["item"].table.source) == ["i2"] * 4 + ["i1"] * 3
    store.close()
    _same(backend.open().current(), built)
    exported = {(s.kind, s.source_id): len(s.boxes) for s in backend.open().export()}
    assert exported == {key: entry.boxes for key, entry in built.entries.items()}


def test_rebuild_replaces_everything(backend: Backend) -> None:
    store = backend.open()
    store.put([_source("item", "old", 3, 1), _source("clip", "old", 2, 2)])
    store.replace_all([_source("item", "new", 2, 3)])
    assert sorted(store.current().entries) == [("item", "new")]
    _same(backend.open().current(), store.current())


def test_deleted_boxes_never_come_back(backend: Backend) -> None:
    store = backend.open()
    clips = [_source("clip", f"c{n}", 4, 100 + n) for n in range(30)]
    store.put(clips)
    for n in range(0, 30, 3):
        store.delete("clip", f"c{n}")
    store.put([_source("clip", "c1", 2, 999)])  # replaced: its first version's boxes are gone too
    gone = np.concatenate([c.vectors for n, c in enumerate(clips) if n % 3 == 0 or n == 1])
    readers = [store, backend.open()]
    if backend.name == "milvus":
        readers.append(backend.open(consistency="Bounded", writer=False))
    for reader in readers:
        live = set(reader.current().sides["clip"].box_ids.tolist())
        assert len(live) == 4 * 20 - 4 + 2
        _, found = reader.search("clip", gone, 5)
        assert set(found.ravel().tolist()) - {-1} <= live
        distances, found = reader.search("clip", gone, 1)
        assert (distances[:, 0] > 1e-4).all()  # none of the deleted vectors found itself


def test_search_equals_exact_search(backend: Backend) -> None:
    store = backend.open()
    sources = [_source("item", f"i{n}", 3, n) for n in range(60)]
    store.put(sources)
    store.delete("item", "i7")
    side = store.current().sides["item"]
    queries = np.random.default_rng(5).normal(size=(25, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = 2.0 - 2.0 * queries @ side.index.vectors.T
    want = side.box_ids[np.argsort(exact, axis=1, kind="stable")[:, :5]]
    distances, found = store.search("item", queries, 5)
    np.testing.assert_array_equal(found, want)
    np.testing.assert_allclose(distances, np.sort(exact, axis=1)[:, :5], atol=1e-5)


def test_a_reader_never_sees_half_a_replacement(backend: Backend) -> None:
    """Each snapshot a reader loads holds, per entry, exactly the boxes that entry's one version has."""
    writer = backend.open()
    reader = backend.open(writer=False) if backend.name == "milvus" else writer
    writer.put([_source("item", "i1", 2, 0), _source("clip", "c1", 3, 1)])
    seen: list[Snapshot] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            snapshot = reader.current()
            if not seen or snapshot is not seen[-1]:
                seen.append(snapshot)
            time.sleep(0.001)  # let the writer run (the local backend's reads take no time)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for step in range(1, 13):
            writer.put([_source("item", "i1", 1 + step % 4, step), _source("clip", "c1", 2 + step % 3, step)])
    finally:
        stop.set()
        thread.join(timeout=60)
    generations = {s.generation for s in seen}
    assert len(generations) > 1, generations
    for snapshot in seen:
        for (kind, source_id), entry in snapshot.entries.items():
            rows = np.flatnonzero(snapshot.sides[kind].table.source == source_id)
            assert len(rows) == entry.boxes, (snapshot.generation, kind, source_id)
        step = snapshot.generation - 1
        if step >= 1:  # generation g holds step g - 1's vectors, all of one version
            want = _source("item", "i1", 1 + step % 4, step).vectors
            want = want / np.linalg.norm(want, axis=1, keepdims=True)
            np.testing.assert_allclose(snapshot.sides["item"].index.vectors, want, atol=1e-5)


def _pair(kind: str, source_id: str, centre: int, boxes: int, seed: int) -> SourceBoxes:
    """An item or clip showing garment ``centre`` (shared by an item and a clip): votes have something to find."""
    base = np.random.default_rng(centre).normal(size=DIM)
    vectors = (base + 0.05 * np.random.default_rng(seed).normal(size=(boxes, DIM))).astype(np.float32)
    frame = -1 if kind == "item" else 40
    return SourceBoxes(kind, source_id, "test", vectors, ["0" if kind == "item" else ""] * boxes, [frame] * boxes,
                       [(0, 0, 10, 10)] * boxes, [0.9] * boxes, [0] * boxes, 1)


def _votes(matcher: GalleryMatcher, snapshot: Snapshot) -> set[tuple]:
    return {(c.item_id, c.video_id, round(c.distance, 5), c.votes) for c in matcher.gallery_votes(snapshot).candidates}


def test_votes_derived_change_by_change_equal_votes_from_scratch(backend: Backend) -> None:
    """Another process's view (a replica, for Milvus) follows the changes and re-votes them incrementally."""
    rules = load_match_config().vote
    writer = backend.open()
    reader = backend.open(writer=False) if backend.name == "milvus" else writer
    follower = GalleryMatcher(rules)
    writer.put([_pair("item", f"i{k}", k, 3, k) for k in range(6)] +
               [_pair("clip", f"c{k}", k, 4, 50 + k) for k in range(6)])
    _votes(follower, reader.current())
    for step, sources in enumerate([[_pair("clip", "c1", 3, 4, 90)], [_pair("item", "i9", 1, 2, 91)],
                                    [_pair("clip", "c7", 9, 3, 92), _pair("item", "i2", 4, 3, 93)]]):
        writer.put(sources)
        if step == 1:
            writer.delete("clip", "c4")
        incremental = _votes(follower, reader.current())
    final = reader.current()
    assert final.generation == 5
    scratch = _votes(GalleryMatcher(rules), backend.open().current())
    assert incremental == scratch and len(scratch) >= 3


def _kill_writer_trial(backend: Backend, folder: Path, trial: int) -> list[str]:
    """Start a writer process changing the gallery, SIGKILL it mid-change; the generations it printed."""
    script = WRITER.format(repo=str(REPO), tests=str(Path(__file__).parent), backend=backend.name,
                           folder=str(folder), uri=backend.uri, collection=backend.collection, changes=60)
    return kill_writer_mid_change(script, lines=3 + 2 * trial, pause_s=0.01 * trial)


def test_a_writer_killed_mid_change_leaves_a_whole_generation(backend: Backend, tmp_path: Path) -> None:
    folder = tmp_path / "gallery"
    for trial in range(2):
        seen = _kill_writer_trial(backend, folder, trial)
        reopened = backend.open()
        assert reopened.current().generation >= int(seen[-1])  # a printed generation was committed
        expected = _expected(tmp_path / f"expected-{trial}", reopened.current().generation)
        _assert_same(reopened, expected)
        expected.close()
        reopened.close()


def test_a_read_only_replica_refuses_changes(milvus_server, tmp_path: Path) -> None:
    backend = Backend("milvus", tmp_path, milvus_server)
    try:
        reader = backend.open(writer=False)
        with pytest.raises(GalleryReadOnly):
            reader.put([_source("item", "i1", 1, 1)])
        with pytest.raises(GalleryReadOnly):
            reader.delete("item", "i1")
    finally:
        backend.close_all()


def test_milvus_server_restart_and_kill_mid_write_keep_a_whole_generation(milvus_server, tmp_path: Path) -> None:
    """Stopped and restarted: the data is kept. Killed (SIGKILL to the server) while a writer changes the
    gallery, then restarted: one whole generation, and the next change commits on top of it."""
    backend = Backend("milvus", tmp_path, milvus_server)
    try:
        store = backend.open()
        for step in range(1, 5):
            change(store, step)
        before = store.current()
        store.close()
        milvus_server.stop()
        milvus_server.start()
        _same(backend.open().current(), before)

        script = WRITER.format(repo=str(REPO), tests=str(Path(__file__).parent), backend="milvus",
                               folder=str(tmp_path / "gallery"), uri=milvus_server.uri,
                               collection=backend.collection, changes=60)
        writer = subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                                  env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            seen = lines_until(writer, 4, time.monotonic() + 120)
            assert seen, writer.stderr.read() if writer.poll() is not None else "the writer printed nothing"
            milvus_server.kill()
        finally:
            writer.kill()
            writer.wait(timeout=30)
            writer.stdout.close()
            writer.stderr.close()
        milvus_server.start()
        reopened = backend.open()
        generation = reopened.current().generation
        assert generation >= int(seen[-1])
        expected = _expected(tmp_path / "expected", generation)
        _assert_same(reopened, expected)
        change(reopened, generation + 1)
        change(expected, generation + 1)
        _assert_same(backend.open(), expected)
        expected.close()
    finally:
        backend.close_all()
