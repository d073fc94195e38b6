"""The gallery survives ``kill -9`` during writes: a writer process changing the gallery as fast as it can is
killed with SIGKILL at a different moment in each trial, and the reopened gallery must be exactly the one of
some committed generation, never a mix (wholly old or wholly new).

The writer makes a fixed sequence of changes (adds, replacements, deletes), one generation each, so the
gallery any generation must hold is known by replaying the same changes in this process.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from service.gallery import GalleryStore
from support import kill_writer_mid_change
from test_service_units import DIM, MODELS, REPO, _source

TRIALS = 3
CHANGES_PER_TRIAL = 400
"""More than a trial can make before it is killed: the writer is always mid-change when the signal lands."""

WRITER = """
import sys
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
from service.gallery import GalleryStore
from test_service_crash import change
store = GalleryStore({folder!r}, {dim}, {models!r})
first = store.snapshot.generation + 1
for step in range(first, first + {changes}):
    change(store, step)
    print(store.snapshot.generation, flush=True)
"""


def change(store: GalleryStore, step: int) -> None:
    """The gallery change number ``step`` (generation ``step``): an add, a replacement or a delete."""
    if step % 5 == 0 and ("clip", f"c{step - 3}") in store.snapshot.entries:
        store.delete("clip", f"c{step - 3}")
    elif step % 3 == 0:
        store.put([_source("item", "i1", 1 + step % 4, step)])  # replaces the item each time
    else:
        store.put([_source("clip", f"c{step}", 1 + step % 3, step), _source("item", f"i{step}", 2, step + 7)])


def _expected(folder: Path, generation: int) -> GalleryStore:
    """The gallery after changes 1 .. ``generation``, made here."""
    store = GalleryStore(folder, DIM, MODELS)
    for step in range(1, generation + 1):
        change(store, step)
    return store


def _assert_same(store: GalleryStore, expected: GalleryStore) -> None:
    got, want = store.snapshot, expected.snapshot
    assert got.generation == want.generation
    assert {k: (e.boxes, e.pictures) for k, e in got.entries.items()} == \
        {k: (e.boxes, e.pictures) for k, e in want.entries.items()}
    for kind in ("item", "clip"):
        np.testing.assert_array_equal(got.sides[kind].table.source, want.sides[kind].table.source)
        np.testing.assert_allclose(got.sides[kind].index.vectors, want.sides[kind].index.vectors, atol=1e-6)


def test_a_writer_killed_during_changes_leaves_a_whole_generation(tmp_path: Path) -> None:
    folder = tmp_path / "gallery"
    for trial in range(TRIALS):
        script = WRITER.format(repo=str(REPO), tests=str(Path(__file__).parent), folder=str(folder), dim=DIM,
                               models=MODELS, changes=CHANGES_PER_TRIAL)
        seen = kill_writer_mid_change(script, lines=3 + 2 * trial, pause_s=0.003 * trial, wait_s=60)
        reopened = GalleryStore(folder, DIM, MODELS)
        try:
            assert reopened.snapshot.generation >= int(seen[-1])  # a printed generation was committed
            assert {p.name for p in folder.glob("segment-*.faiss*")} == {s.file for s in reopened.segments}
            expected = _expected(tmp_path / f"expected-{trial}", reopened.snapshot.generation)
            _assert_same(reopened, expected)
            expected.close()
        finally:
            reopened.close()
