"""The gallery survives ``kill -9`` during writes: a writer process changing the gallery as fast as it can is
killed with SIGKILL at a different moment in each trial, and the reopened gallery must be exactly the one of
some committed generation, never a mix (wholly old or wholly new).

The writer makes a fixed sequence of changes (adds, replacements, deletes), one generation each, so the
gallery any generation must hold is known by replaying the same changes in this process.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from service.gallery import GalleryStore
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


def _lines_until(process: subprocess.Popen, count: int, deadline: float) -> list[str]:
    """The writer's first ``count`` lines (committed generations), waiting at most until ``deadline``."""
    lines: list[str] = []
    while len(lines) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
    return lines


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
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for trial in range(TRIALS):
        script = WRITER.format(repo=str(REPO), tests=str(Path(__file__).parent), folder=str(folder), dim=DIM,
                               models=MODELS, changes=CHANGES_PER_TRIAL)
        writer = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            seen = _lines_until(writer, 3 + 2 * trial, time.monotonic() + 60)
            assert seen, writer.stderr.read() if writer.poll() is not None else "the writer printed nothing"
            time.sleep(0.003 * trial)  # land the signal at another point of a change in each trial
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=30)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait(timeout=30)
            writer.stdout.close()
            writer.stderr.close()
        assert writer.returncode == -signal.SIGKILL, f"trial {trial}: the writer ended before the kill"
        reopened = GalleryStore(folder, DIM, MODELS)
        try:
            assert reopened.snapshot.generation >= int(seen[-1])  # a printed generation was committed
            assert {p.name for p in folder.glob("segment-*.faiss*")} == {s.file for s in reopened.segments}
            expected = _expected(tmp_path / f"expected-{trial}", reopened.snapshot.generation)
            _assert_same(reopened, expected)
            expected.close()
        finally:
            reopened.close()
