from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataset.boxes import clip_box, iou, iou_matrix, is_degenerate
from dataset.errors import ImageError
from dataset.images import image_size, read_image, write_image
from dataset.jsonio import write_json_atomic
from dataset.video_write import Mp4Writer, write_mp4


def test_iou_conventions() -> None:
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [10, 10, 20, 20]) == 0.0
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    # +1 convention: touching boxes overlap by one pixel column
    assert iou([0, 0, 9, 9], [9, 0, 18, 9], plus_one=True) == pytest.approx(10 / 190)
    m = iou_matrix(np.array([[0, 0, 10, 10], [0, 0, 5, 5]]), np.array([[0, 0, 10, 10]]))
    assert m.shape == (2, 1) and m[0, 0] == 1.0 and m[1, 0] == pytest.approx(0.25)


def test_clip_and_degenerate() -> None:
    assert clip_box([-3.7, 2.9, 900.2, 50.5], 800, 600) == (0, 2, 800, 50)
    assert is_degenerate((5, 5, 5, 40)) and not is_degenerate((5, 5, 6, 6))


def test_atomic_json_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "a" / "r.json", {"x": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"x": object()})
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_images_are_rgb_and_errors_name_the_file(tmp_path: Path) -> None:
    red = np.zeros((20, 30, 3), np.uint8)
    red[..., 0] = 255
    path = write_image(tmp_path / "red.png", red)
    assert np.array_equal(read_image(path), red)
    assert cv2.imread(str(path))[0, 0].tolist() == [0, 0, 255]  # BGR on disk, RGB in memory
    assert image_size(path) == (30, 20)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    for name, problem in [("empty.jpg", "empty"), ("text.jpg", "not a decodable image"), ("none.jpg", "not found")]:
        with pytest.raises(ImageError, match=problem) as caught:
            read_image(tmp_path / name)
        assert name in str(caught.value)


@pytest.mark.parametrize("codec", ["h264", "mp4v"])
def test_mp4_writer_round_trip(tmp_path: Path, codec: str) -> None:
    frames = [np.full((96, 64, 3), (40 * k, 255 - 40 * k, 128), np.uint8) for k in range(6)]
    path = write_mp4(tmp_path / f"{codec}.mp4", frames, fps=25, codec=codec)
    cap = cv2.VideoCapture(str(path))
    decoded = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        decoded.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    assert len(decoded) == 6
    assert np.abs(decoded[3].astype(int) - frames[3]).mean() < 6


def test_mp4_writer_rejects_bad_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        Mp4Writer(tmp_path / "odd.mp4", 65, 96)
    with Mp4Writer(tmp_path / "w.mp4", 64, 96) as writer:
        with pytest.raises(ValueError, match="expected"):
            writer.write(np.zeros((10, 10, 3), np.uint8))
        writer.write(np.zeros((96, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="no frames"):
        write_mp4(tmp_path / "none.mp4", [])
