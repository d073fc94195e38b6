"""The HTML report of a pipeline run: its content, and that a real headless browser renders it."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dataset.images import read_image
from pipeline.run import PipelineResult
from pipeline.report import thumbnail
from test_pipeline import detector_run, pipeline_inputs  # noqa: F401  (the shared session inputs)

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def test_report_lists_every_clip_with_thumbnails(detector_run: PipelineResult) -> None:
    page = detector_run.report_path.read_text(encoding="utf-8")
    assert 'id="summary"' in page and 'id="score"' in page and 'id="clips"' in page
    for video_id in detector_run.decisions:
        assert f"<td>{video_id}</td>" in page
    for video_id in detector_run.result:
        for kind in ("frame", "shop"):
            thumb = detector_run.out_dir / "report" / f"{video_id}_{kind}.jpg"
            assert thumb.is_file() and f"report/{video_id}_{kind}.jpg" in page
            assert read_image(thumb).shape[0] > 100


def test_thumbnail_draws_the_box_at_scale() -> None:
    image = np.zeros((440, 200, 3), np.uint8)
    small = thumbnail(image, (20, 40, 100, 200), height=220)
    assert small.shape == (220, 100, 3)
    assert small[20, 10:50].any() and not small[60:90, 20:40].any()


def test_report_renders_in_headless_chromium(detector_run: PipelineResult, tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium binary")
    png = tmp_path / "report.png"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1200,900",
               detector_run.report_path.resolve().as_uri()]
    subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert png.is_file(), "chromium wrote no screenshot"
    pixels = read_image(png)
    assert pixels.shape[:2] == (900, 1200)
    # A rendered page has text, table borders and thumbnails: many distinct colours, not a blank canvas.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom",
                          detector_run.report_path.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120, check=False).stdout
    assert 'id="clips"' in dom and dom.count("<tr") >= len(detector_run.decisions) + 4
