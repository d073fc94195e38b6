"""bench.index and bench.service_match run end to end on small galleries with consistent numbers: they cannot rot."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_index_benchmark_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "index.json"
    cmd = [sys.executable, "-m", "bench.index", "--sizes", "3000", "--dim", "32", "--queries", "100",
           "--single", "3", "--nprobe", "4", "--pq-m", "8", "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["rows"]
    by_name = {(r["index"], r["rerank"]): r for r in rows}
    assert set(by_name) == {("flat", None), ("torch", None), ("ivf", None), ("ivfpq", 1), ("ivfpq", 8)}
    assert by_name[("flat", None)]["recall@10"] == 1.0  # the reference
    assert by_name[("torch", None)]["recall@1"] == 1.0  # the other exact backend
    assert by_name[("ivfpq", 8)]["recall@1"] >= by_name[("ivfpq", 1)]["recall@1"]
    assert all(r["queries_per_s"] > 0 and r["latency_ms"] > 0 for r in rows)
    # The vectors are clustered the way the docstring says: two boxes of one item at the asked distance.
    monkeypatch.syspath_prepend(str(REPO))
    from bench.index import clustered
    vectors, centres = clustered(2, 256, 1, 0.8, np.random.default_rng(0))
    assert abs(float(np.sum((vectors[0] - vectors[1]) ** 2)) - 0.8) < 0.15


def test_service_match_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "service_match.json"
    cmd = [sys.executable, "-m", "bench.service_match", "--pairs", "20", "--dim", "32", "--queries", "4",
           "--changes", "2", "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {r["query"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"clip new", "clip indexed", "item new", "item indexed", "add clip", "add item"}
    # An entry sent back under its own id replaces itself and must find its partner again.
    assert rows["clip indexed"]["right"] == 1.0 and rows["item indexed"]["right"] == 1.0
    assert all(r["p50_ms"] > 0 and r["clip_boxes"] == 20 * 48 for r in rows.values())
    for kind in ("add clip", "add item"):
        assert rows[kind]["commit_max_ms"] >= rows[kind]["commit_p50_ms"] > 0
