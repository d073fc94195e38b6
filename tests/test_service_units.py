"""Service parts without models: gallery crash safety, micro-batching, admission, path confinement, metrics text."""
from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from service import batcher
from service.batcher import Admission, MicroBatcher, Overloaded, PixelBudget
from service.errors import ApiError
from service.gallery import GalleryError, GalleryStore, SourceBoxes
from service.metrics import Metrics
from service.segments import write_segment
from service.paths import resolve_request_path

REPO = Path(__file__).resolve().parents[1]
DIM = 8
MODELS = {"test": 1}


def _source(kind: str, source_id: str, boxes: int, seed: int) -> SourceBoxes:
    vectors = np.random.default_rng(seed).normal(size=(boxes, DIM)).astype(np.float32)
    frame = -1 if kind == "item" else 40
    return SourceBoxes(kind, source_id, "test", vectors, ["0" if kind == "item" else ""] * boxes, [frame] * boxes,
                       [(0, 0, 10, 10)] * boxes, [0.9] * boxes, [0] * boxes, 1)


def test_snapshot_built_in_memory_equals_the_one_read_back_from_disk(tmp_path: Path) -> None:
    store = GalleryStore(tmp_path, DIM, MODELS)
    store.put([_source("item", "i1", 2, 1), _source("clip", "c1", 3, 2), _source("item", "i2", 4, 3)])
    store.put([_source("clip", "c2", 5, 4), _source("item", "i1", 3, 5)])  # i1 replaced
    store.delete("clip", "c1")
    store.put([_source("clip", "c3", 2, 6)])
    built = store.snapshot
    store.close()
    read = GalleryStore(tmp_path, DIM, MODELS).snapshot
    assert built.generation == read.generation and built.entries == read.entries
    for kind in ("item", "clip"):
        a, b = built.sides[kind], read.sides[kind]
        np.testing.assert_array_equal(a.box_ids, b.box_ids)
        for name in ("source", "score", "frame", "box", "name"):
            np.testing.assert_array_equal(getattr(a.table, name), getattr(b.table, name), err_msg=name)
        np.testing.assert_allclose(a.index.vectors, b.index.vectors, atol=1e-6)
        assert a.table.vectors is a.index.vectors
    assert list(built.sides["item"].table.source) == ["i2"] * 4 + ["i1"] * 3


def _reopened_equal(store: GalleryStore, folder: Path) -> None:
    reopened = GalleryStore(folder, DIM, MODELS)
    assert reopened.segments == store.segments
    for kind in ("item", "clip"):
        np.testing.assert_array_equal(reopened.snapshot.sides[kind].box_ids, store.snapshot.sides[kind].box_ids)
        np.testing.assert_allclose(reopened.snapshot.sides[kind].index.vectors,
                                   store.snapshot.sides[kind].index.vectors, atol=1e-6)
    reopened.close()


def test_segments_merge_like_a_binary_counter_and_compact_when_mostly_dead(tmp_path: Path) -> None:
    store = GalleryStore(tmp_path, DIM, MODELS)
    written = 0
    for n in range(1, 33):
        store.put([_source("clip", f"c{n}", 1, n)])
        written += sum(s.count for s in store.segments if s.file == f"segment-{store.snapshot.generation:08d}.faiss")
        assert [s.count for s in store.segments] == [1 << b for b in reversed(range(6)) if n >> b & 1], n
        assert [s.first_id for s in store.segments] == sorted(s.first_id for s in store.segments)
    assert written <= 32 * 6  # each vector rewritten at most log2(32) + 1 times
    _reopened_equal(store, tmp_path)
    for n in range(1, 21):
        store.delete("clip", f"c{n}")
        live, stored = len(store.snapshot.sides["clip"]), sum(s.count for s in store.segments)
        assert stored <= 2 * live, n
    assert len(store.segments) < 3
    assert {p.name for p in tmp_path.glob("*.faiss*")} == {s.file for s in store.segments}
    _reopened_equal(store, tmp_path)
    store.replace_all([_source("item", "i1", 3, 40)])
    assert [(s.first_id, s.count) for s in store.segments] == [(32, 3)]
    assert [p.name for p in tmp_path.glob("*.faiss*")] == [store.segments[0].file]
    _reopened_equal(store, tmp_path)


def test_a_gallery_written_as_one_index_file_opens_and_grows(tmp_path: Path) -> None:
    store = GalleryStore(tmp_path, DIM, MODELS)
    store.put([_source("item", "i1", 2, 1), _source("clip", "c1", 3, 2)])
    ids = np.concatenate([store.snapshot.sides[k].box_ids for k in ("item", "clip")])
    vectors = np.concatenate([store.snapshot.sides[k].index.vectors for k in ("item", "clip")])
    expected = {k: store.snapshot.sides[k].box_ids for k in ("item", "clip")}
    store.close()
    for segment in tmp_path.glob("segment-*.faiss"):
        segment.unlink()
    write_segment(tmp_path / "index-00000001.faiss", ids, vectors)
    with sqlite3.connect(tmp_path / "gallery.sqlite") as db:
        db.execute("DELETE FROM meta WHERE key = 'segments'")
        db.execute("INSERT INTO meta VALUES ('index_file', 'index-00000001.faiss')")
    legacy = GalleryStore(tmp_path, DIM, MODELS)
    assert [(s.file, s.count) for s in legacy.segments] == [("index-00000001.faiss", 5)]
    for kind, box_ids in expected.items():
        np.testing.assert_array_equal(legacy.snapshot.sides[kind].box_ids, box_ids)
    legacy.put([_source("clip", "c2", 1, 3)])
    _reopened_equal(legacy, tmp_path)


def test_a_missing_segment_file_is_named_at_start_up(tmp_path: Path) -> None:
    store = GalleryStore(tmp_path, DIM, MODELS)
    store.put([_source("item", "i1", 2, 1)])
    store.put([_source("clip", "c1", 1, 2)])
    lost = store.segments[-1].file
    store.close()
    (tmp_path / lost).unlink()
    with pytest.raises(GalleryError, match=f"{lost}: a committed gallery segment is missing"):
        GalleryStore(tmp_path, DIM, MODELS)


def test_a_failed_commit_removes_only_its_own_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = GalleryStore(tmp_path, DIM, MODELS)
    store.put([_source("item", "i1", 2, 1)])
    committed = {p.name for p in tmp_path.glob("segment-*.faiss")}
    store.close()
    fresh = GalleryStore(tmp_path, DIM, MODELS, fresh=True)

    def fail(*args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(fresh, "_commit", fail)
    with pytest.raises(sqlite3.OperationalError):
        fresh.replace_all([_source("clip", "c1", 3, 2)])
    assert {p.name for p in tmp_path.glob("segment-*.faiss*")} == committed
    assert list(GalleryStore(tmp_path, DIM, MODELS).snapshot.entries) == [("item", "i1")]


CRASH = """
import os, sys
import numpy as np
sys.path.insert(0, {repo!r})
from tests.test_service_units import _source, DIM, MODELS
from service.gallery import GalleryStore
store = GalleryStore({folder!r}, DIM, MODELS)
def crash(*args, **kwargs):
    os._exit(9)  # dies after the new index file is written, before the metadata commit
store._commit = crash
store.put([_source("clip", "c9", 3, 9)])
"""


def test_a_crash_between_index_write_and_commit_keeps_the_previous_gallery(tmp_path: Path) -> None:
    store = GalleryStore(tmp_path, DIM, MODELS)
    store.put([_source("item", "i1", 2, 1), _source("clip", "c1", 3, 2)])
    store.delete("item", "i1")
    store.put([_source("item", "i2", 4, 3)])
    before = {k: v.boxes for k, v in store.snapshot.entries.items()}
    vectors = store.snapshot.sides["clip"].index.vectors.copy()
    segments = sorted(segment.file for segment in store.segments)
    store.close()
    done = subprocess.run([sys.executable, "-c", CRASH.format(repo=str(REPO), folder=str(tmp_path))],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr
    files = sorted(p.name for p in tmp_path.glob("segment-*.faiss"))
    assert len(files) == len(segments) + 1  # the orphan of the crashed change is still there
    reopened = GalleryStore(tmp_path, DIM, MODELS)
    assert {k: v.boxes for k, v in reopened.snapshot.entries.items()} == before
    np.testing.assert_array_equal(reopened.snapshot.sides["clip"].index.vectors, vectors)
    assert sorted(p.name for p in tmp_path.glob("segment-*.faiss")) == segments
    with pytest.raises(KeyError):
        reopened.delete("item", "i1")


def test_other_models_are_refused_and_a_fresh_store_replaces_all(tmp_path: Path) -> None:
    GalleryStore(tmp_path, DIM, MODELS).put([_source("item", "i1", 2, 1)])
    with pytest.raises(Exception, match="other models"):
        GalleryStore(tmp_path, DIM, {"other": 2})
    fresh = GalleryStore(tmp_path, DIM, {"other": 2}, fresh=True)
    fresh.replace_all([_source("clip", "c1", 1, 1)])
    assert list(GalleryStore(tmp_path, DIM, {"other": 2}).snapshot.entries) == [("clip", "c1")]


def test_concurrent_jobs_share_one_call_and_a_full_queue_refuses() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def model(_key: object, items: list[int]) -> list[int]:
        gate.wait(5)
        calls.append(len(items))
        return [i * 10 for i in items]

    batcher = MicroBatcher("test", model, max_items=100, max_wait_s=0.2, max_jobs=3)
    try:
        futures = [batcher.submit("k", [n, n + 1]) for n in (0, 2, 4)]
        with pytest.raises(Overloaded):
            batcher.submit("k", [9])
        gate.set()
        assert [f.result(5) for f in futures] == [[0, 10], [20, 30], [40, 50]]
        assert calls == [6]
    finally:
        batcher.close()


def test_admission_refuses_a_request_expected_to_wait_past_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(batcher.time, "monotonic", lambda: now[0])
    admission = Admission(limit=8, max_wait_s=1.0)
    with admission.slot():  # nothing measured yet: nothing expected
        now[0] += 0.6  # one request alone held its slot 0.6 s
    assert admission.expected_wait() == 0.0  # idle
    with admission.slot(), admission.slot():  # behind one request: 0.6 s expected, admitted
        assert admission.expected_wait() == pytest.approx(1.2)
        with pytest.raises(Overloaded) as refused:
            with admission.slot():
                pass
    assert refused.value.code == "queue_wait" and refused.value.retry_after == pytest.approx(1.2)
    assert admission.active == 0


def test_pixels_in_flight_are_bounded_and_the_rebuild_waits_for_room() -> None:
    async def scenario() -> list[str]:
        budget = PixelBudget(100)
        events: list[str] = []

        async def waiting() -> None:
            async with budget.hold(70, wait=True):
                events.append(f"waiter holds {budget.used}")

        async with budget.hold(60):
            with pytest.raises(Overloaded) as refused:
                async with budget.hold(50):
                    pass
            assert refused.value.code == "pixels_in_flight"
            task = asyncio.create_task(waiting())
            await asyncio.sleep(0.01)
            events.append(f"first holds {budget.used}")
        await asyncio.wait_for(task, 5)
        assert budget.used == 0
        return events

    assert asyncio.run(scenario()) == ["first holds 60", "waiter holds 70"]


def test_paths_are_confined_to_the_roots(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "image" / "1").mkdir(parents=True)
    (root / "up").symlink_to(tmp_path)
    assert resolve_request_path("image/1", [root]) == (root / "image" / "1").resolve()
    assert resolve_request_path(str(root / "image"), [root]) == (root / "image").resolve()
    for raw, status in (("../x", 403), ("image/../../x", 403), ("/etc", 403), ("up", 403), ("image/2", 404),
                        ("", 422)):
        with pytest.raises(ApiError) as caught:
            resolve_request_path(raw, [root])
        assert caught.value.status == status, raw


def test_metrics_text_follows_the_exposition_format() -> None:
    metrics = Metrics()
    metrics.requests.inc("/v1/match", "POST", "200")
    metrics.latency.observe(0.03, "/v1/match")
    metrics.gauge("shopmatch_gallery_entries", "Entries.", lambda: {("item",): 3}, ("kind",))
    text = metrics.render()
    assert 'shopmatch_requests_total{route="/v1/match",method="POST",status="200"} 1\n' in text
    assert 'shopmatch_request_duration_seconds_bucket{route="/v1/match",le="0.025"} 0\n' in text
    assert 'shopmatch_request_duration_seconds_bucket{route="/v1/match",le="0.05"} 1\n' in text
    assert 'shopmatch_request_duration_seconds_bucket{route="/v1/match",le="+Inf"} 1\n' in text
    assert 'shopmatch_gallery_entries{kind="item"} 3\n' in text
    assert "# TYPE shopmatch_request_duration_seconds histogram" in text
