"""bench.page: results JSON in, the same markdown page out every time; the committed page is current."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]

CPU_MACHINE = {"cpu_model": "Test CPU Model", "cpu_count": 4, "cpu_usable": 2, "load_average_1min": 0.5,
               "python": "3.11.0", "accelerator": None, "packages": {"numpy": "9.9.9"}}
GPU_MACHINE = {**CPU_MACHINE, "accelerator": {"name": "Test GPU Name", "count": 1, "cuda": "0.1", "torch": "0.2"}}


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``bench`` is run from the repository root, not installed; import it the same way."""
    monkeypatch.syspath_prepend(str(REPO))
    from bench import page
    return page


def _write(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A results folder with a CPU and a GPU result of one benchmark, an unknown benchmark and two artefacts."""
    folder = tmp_path / "results"
    folder.mkdir()
    _write(folder / "detect_gpu.json", {
        "name": "detect", "timestamp": "2000-01-02T03:04:05+00:00", "machine": GPU_MACHINE,
        "rows": [{"model": "a", "frames_per_s": 123.456}], "extra": {"precision": "bf16"}})
    _write(folder / "detect_cpu.json", {
        "name": "detect", "timestamp": "2000-01-01T00:00:00+00:00", "machine": CPU_MACHINE,
        "rows": [{"model": "a", "frames_per_s": 1.5},
                 {"model": "b|c", "proposals": 7, "failures": {"miss": 2, "wrong": [1, 2]}}],
        "extra": {"note": "rows *without* a key show a dash"}})
    _write(folder / "zzz_new.json", {"name": "zzz_new", "rows": [{"x": True}]})
    _write(folder / "not_a_result.json", {"hello": "world"})
    (folder / "calibrated.yaml").write_text("# what this file is\nkey: 1\n", encoding="utf-8")
    return folder


def _cells(line: str) -> list[str]:
    """A markdown table line's cells, padding removed (an escaped pipe stays inside its cell)."""
    return [cell.strip() for cell in line.replace("\\|", "\0").strip("|").split("|")]


def test_page_tables_hardware_and_artefacts(page: ModuleType, results: Path, tmp_path: Path) -> None:
    text = page.build_page(results, tmp_path / "README.md")
    lines = text.splitlines()
    assert "### Test CPU Model · [`detect_cpu.json`](results/detect_cpu.json)" in lines
    assert "### Test GPU Name, bf16 · [`detect_gpu.json`](results/detect_gpu.json)" in lines
    # Columns are every row's keys in first-seen order; a missing value is a dash, nested ones one line.
    header = next(i for i, line in enumerate(lines) if line.startswith("| model ") and "failures" in line)
    assert _cells(lines[header]) == ["model", "frames_per_s", "proposals", "failures"]
    assert [cell.endswith(":") for cell in _cells(lines[header + 1])] == [False, True, True, False]
    assert lines[header + 2].startswith("| a ")
    assert "| b\\|c " in lines[header + 3] and " | - | 7 | {miss: 2, wrong: [1, 2]} |" in " ".join(
        lines[header + 3].split())
    assert "Settings: `note` rows \\*without\\* a key show a dash" in lines
    assert "<sub>2000-01-01T00:00:00+00:00 · 2 of 4 CPUs, load 0.5 · Python 3.11.0, numpy 9.9.9</sub>" in lines
    # Known benchmarks come first, in the page's order; an unknown one still gets a section.
    assert text.index("## detect\n") < text.index("## zzz_new\n") < text.index("## Other artefacts\n")
    assert "Reproduce: `python -m bench.zzz_new`" in lines
    assert "- [calibrated.yaml](results/calibrated.yaml): what this file is" in lines
    assert "- [not_a_result.json](results/not_a_result.json)" in lines


def test_page_is_deterministic_and_check_sees_staleness(page: ModuleType, results: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "README.md"
    assert page.main(["--results", str(results), "--out", str(out)]) == 0
    first = out.read_bytes()
    # Rewriting the same JSON (new mtimes, another creation order) gives the same bytes.
    for path in sorted(results.iterdir(), reverse=True):
        path.write_bytes(path.read_bytes())
        os.utime(path, (1, 1))
    assert page.main(["--results", str(results), "--out", str(out)]) == 0
    assert out.read_bytes() == first
    capsys.readouterr()
    assert page.main(["--results", str(results), "--out", str(out), "--check"]) == 0
    _write(results / "zzz_new.json", {"name": "zzz_new", "rows": [{"x": False}]})
    assert page.main(["--results", str(results), "--out", str(out), "--check"]) == 1
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "stale" in message and "python -m bench.page" in message
    assert out.read_bytes() == first  # --check writes nothing


def test_committed_page_matches_committed_results() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.page", "--check"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
