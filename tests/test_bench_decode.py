"""bench.decode runs end to end on a tiny clip and bench.common's helpers behave: the benchmarks cannot rot."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench_common(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``bench`` is run from the repository root, not installed; import it the same way."""
    monkeypatch.syspath_prepend(str(REPO))
    from bench import common
    return common


def test_decode_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "decode.json"
    cmd = [sys.executable, "-m", "bench.decode", "--frames", "60", "--repeats", "1",
           "--width", "64", "--height", "112", "--extra-sizes", "128x72", "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "opencv-seek" in done.stdout and "same_pixels" in done.stdout
    result = json.loads(out.read_text())
    assert result["name"] == "decode" and result["machine"]["cpu_count"] >= 1
    assert result["extra"]["sample_indices"] == list(range(12, 60, 3))
    rows = result["rows"]
    assert {r["size"] for r in rows} == {"64x112", "128x72"}
    methods = {"decord", "decord-batch", "opencv-sequential", "opencv-seek", "decord-all", "opencv-all"}
    assert {r["method"] for r in rows} == methods
    timed = [r for r in rows if "refused" not in r]  # decord's batch copy refuses some widths on some CPUs
    assert {r["method"] for r in rows if "refused" in r} <= {"decord-batch", "decord-all"}
    assert all(r["same_pixels"] and r["frames_per_s"] > 0 for r in timed)
    assert {r["frames"] for r in timed if r["method"].endswith("-all")} == {60}


def test_sample_indices_match_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    from bench.decode import sample_indices
    assert sample_indices(400) == list(range(80, 381, 20))


def test_format_table_aligns_columns(bench_common: ModuleType) -> None:
    rows = [{"method": "decord", "ms": 246.4, "ok": True}, {"method": "opencv-seek", "ms": 3.25, "ok": False}]
    lines = bench_common.format_table(rows, ["method", "ms", "ok", "absent"]).splitlines()
    assert lines[0].split() == ["method", "ms", "ok", "absent"]
    assert lines[2].split() == ["decord", "246.4", "yes", "-"]
    assert lines[3].split() == ["opencv-seek", "3.25", "no", "-"]
    assert lines[2].index("246.4") + len("246.4") == lines[3].index("3.25") + len("3.25")  # right-aligned


def test_measure_returns_the_median(bench_common: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 1.0, 10.0, 15.0, 20.0, 22.0])  # runs of 1 s, 5 s and 2 s
    monkeypatch.setattr(bench_common.time, "perf_counter", lambda: next(clock))
    calls = []
    assert bench_common.measure(lambda: calls.append(1), repeats=3, warmup=2) == 2.0
    assert len(calls) == 5


def test_measure_interleaved_times_each_function_in_rounds(bench_common: ModuleType,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 1.0, 1.0, 4.0, 4.0, 7.0, 7.0, 8.0])  # rounds: a 1 s, b 3 s; a 3 s, b 1 s
    cpu = iter([0.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 8.0])  # 2 s each
    monkeypatch.setattr(bench_common.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(bench_common.time, "process_time", lambda: next(cpu))
    order: list[str] = []
    medians = bench_common.measure_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                               repeats=2, warmup=1)
    assert medians == {"a": bench_common.Timing(2.0, 2.0), "b": bench_common.Timing(2.0, 2.0)}
    assert order == ["a", "b"] * 3


def test_write_result_records_the_machine(bench_common: ModuleType, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_common, "_accelerator", lambda: None)  # importing torch costs seconds
    path = bench_common.write_result(tmp_path / "sub" / "r.json", "demo", [{"a": 1}], {"k": "v"})
    result = json.loads(path.read_text())
    assert (result["name"], result["rows"], result["extra"]) == ("demo", [{"a": 1}], {"k": "v"})
    machine = result["machine"]
    assert machine["python"].count(".") == 2 and "numpy" in machine["packages"]
    assert {"cpu_model", "cpu_count", "cpu_usable", "accelerator", "platform"} <= set(machine)
    assert result["timestamp"].endswith("+00:00")
