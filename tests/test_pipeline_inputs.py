"""A batch run's wrong inputs end in one line naming the path and exit code 2, before anything is written;
FFmpeg's own log lines stay out of the terminal.

Driven as a user drives them, ``run.sh`` in a subprocess, since the exit code
and what reaches stderr are the point; the further cases call the same
``main`` in this process (a subprocess per case would mostly time imports). The
roots here are bare layouts and the weights placeholder files: every check
fails before a model or a clip would be read. Tests run as root, for whom
permission bits do not stop a write, so "cannot be written" is a path under a
regular file, which fails for everyone.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dataset.video_write import write_mp4
from pipeline.run import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """A root with the contest folders, placeholder weights and a regular file to nest paths under."""
    root = tmp_path / "root"
    (root / "video").mkdir(parents=True)
    (root / "image").mkdir()
    weights = tmp_path / "detector.pth"
    weights.write_bytes(b"placeholder")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    return {"root": root, "weights": weights, "blocker": blocker, "base": tmp_path}


def _run_sh(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "run.sh"), *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _run_main(capsys: pytest.CaptureFixture[str], *args: str | Path) -> subprocess.CompletedProcess:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def _one_line_error(done: subprocess.CompletedProcess, *named: Path | str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    for name in named:
        assert str(name) in lines[0], lines[0]
    return lines[0]


def test_run_sh_help_prints_every_option() -> None:
    """``--help`` and ``-h`` are a user's first try: the pipeline's whole help and exit 0, not a usage error."""
    for flag in ("--help", "-h"):
        done = _run_sh(flag)
        assert done.returncode == 0, done.stderr
        assert "--detector" in done.stdout and "--embedders" in done.stdout and "--ground-truth-boxes" in done.stdout
    done = _run_sh()
    assert done.returncode == 2 and "--help" in done.stderr


def test_unwritable_output_folder_is_one_line_naming_it(layout: dict[str, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = layout["blocker"] / "out"
    done = _run_sh(layout["root"], out, "--detector", "tiny", layout["weights"], "--embedders", "lite0", "-")
    assert "is a file" in _one_line_error(done, out, layout["blocker"])
    # An output folder that is itself a file is refused the same way.
    done = _run_main(capsys, layout["root"], layout["blocker"], "--detector", "tiny", layout["weights"],
                     "--embedders", "lite0", "-")
    _one_line_error(done, layout["blocker"])


def test_missing_weights_are_named_before_anything_is_written(layout: dict[str, Path],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = layout["base"] / "out"
    typo = layout["base"] / "detectr.pth"
    done = _run_sh(layout["root"], out, "--detector", "tiny", typo, "--embedders", "lite0", "-")
    assert "detector weights not found" in _one_line_error(done, typo)
    assert not out.exists(), "the output folder is made only once every input checked out"
    missing = layout["base"] / "embedder.pt"
    done = _run_main(capsys, layout["root"], out, "--detector", "tiny", layout["weights"], "--embedders", "tiny",
                     missing)
    assert "embedder weights not found" in _one_line_error(done, missing)
    done = _run_main(capsys, layout["root"], out, "--detector", "tiny", layout["weights"], "--embedders", "tiny",
                     "-")
    assert "random weights" in _one_line_error(done, "tiny")
    assert not out.exists()


def test_weights_that_are_not_a_checkpoint_are_one_line_naming_them(layout: dict[str, Path],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A text file given as weights passes the input checks (it is there and readable); loading it then names it
    in one line instead of ending in a pickle traceback."""
    out = layout["base"] / "out"
    done = _run_main(capsys, layout["root"], out, "--ground-truth-boxes", "--embedders", "tiny", layout["weights"])
    assert "not a PyTorch checkpoint" in _one_line_error(done, layout["weights"])


def test_missing_root_and_unknown_config_are_named(layout: dict[str, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = layout["base"] / "out"
    absent = layout["base"] / "no_such_root"
    done = _run_main(capsys, absent, out, "--detector", "tiny", layout["weights"], "--embedders", "lite0", "-")
    assert "dataset root not found" in _one_line_error(done, absent)
    assert not out.exists()
    done = _run_main(capsys, layout["root"], out, "--detector", "tyni", layout["weights"], "--embedders", "lite0", "-")
    assert "no such detector config" in _one_line_error(done, "tyni")


def test_a_cut_off_clip_reads_without_ffmpeg_noise(tmp_path: Path) -> None:
    """A clip cut short mid-stream: FFmpeg logs 'Invalid NAL unit size' and 'partial file' unless silenced;
    what it would say comes back as missing frames instead."""
    clip = tmp_path / "cut.mp4"
    rng = np.random.default_rng(0)
    write_mp4(clip, (rng.integers(0, 255, (224, 128, 3), dtype=np.uint8) for _ in range(100)), gop=10)
    data = clip.read_bytes()
    clip.write_bytes(data[: len(data) * 6 // 10])
    for backend in ("opencv", *(["decord"] if importlib.util.find_spec("decord") else [])):
        code = ("import sys; from dataset.frames import read_frames; "
                f"c = read_frames(sys.argv[1], [0, 40, 95], {backend!r}); print(c.indices, c.missing)")
        done = subprocess.run([sys.executable, "-c", code, str(clip)], capture_output=True, text=True, cwd=REPO,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().endswith("[95]"), done.stdout
        assert done.stderr.strip() == "", f"{backend}: {done.stderr}"
