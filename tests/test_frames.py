"""dataset.frames: both backends return the right frames in RGB, bad files raise VideoError naming them."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from dataset import frames as frames_module
from dataset.errors import IssueLog, VideoError
from dataset.frames import ClipFrames, probe, read_frames, read_frames_many
from pipeline.source import Source, read_source
from dataset.video_write import write_mp4

NUM_FRAMES = 40
COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))  # frame i is COLOURS[i % 3] on top
INDEX_BITS = 6
BACKENDS = ("decord", "opencv")
SAMPLE_VIDEO = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sample_videos"
                / "intel_one_by_one_person" / "one-by-one-person-detection.mp4")


def coded_frame(index: int, width: int, height: int) -> np.ndarray:
    """Top half a pure colour (checks channel order); bottom half the index in black/white stripes.

    Binary stripes survive any codec's error, so a wrong frame index cannot pass as a rounding error.
    """
    frame = np.zeros((height, width, 3), np.uint8)
    frame[: height // 2] = COLOURS[index % 3]
    for bit in range(INDEX_BITS):
        if index >> bit & 1:
            frame[height // 2:, bit * width // INDEX_BITS: (bit + 1) * width // INDEX_BITS] = 255
    return frame


def decoded_index(frame: np.ndarray) -> int:
    height, width = frame.shape[:2]
    row = 3 * height // 4
    centres = [(2 * bit + 1) * width // (2 * INDEX_BITS) for bit in range(INDEX_BITS)]
    bits = [frame[row - 2: row + 2, x - 1: x + 2].mean() > 127 for x in centres]
    return sum(1 << bit for bit, on in enumerate(bits) if on)


def top_colour(frame: np.ndarray) -> np.ndarray:
    height, width = frame.shape[:2]
    return frame[height // 4 - 2: height // 4 + 2, width // 2 - 2: width // 2 + 2].reshape(-1, 3).mean(axis=0)


def noisy_frames(width: int, height: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """Moving content with noise, so that any decoder difference would show up in the pixels."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[:] = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
        cv2.circle(frame, ((3 * i) % width, height // 2), height // 5, (200, 40, 90), -1)
        noise = rng.integers(-20, 21, frame.shape, dtype=np.int16)
        frames.append(np.clip(frame + noise, 0, 255).astype(np.uint8))
    return frames


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Portrait and landscape coded clips (9:16 and 16:9 like the contest and sample videos)."""
    root = tmp_path_factory.mktemp("clips")
    return {name: write_mp4(root / f"{name}.mp4", (coded_frame(i, w, h) for i in range(NUM_FRAMES)), gop=10)
            for name, (w, h) in {"portrait": (72, 128), "landscape": (128, 72)}.items()}


@pytest.fixture(scope="module")
def noisy_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("noisy") / "noisy.mp4", noisy_frames(72, 128, NUM_FRAMES), gop=10)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory, noisy_clip: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    data = noisy_clip.read_bytes()
    ok, jpeg = cv2.imencode(".jpg", np.zeros((32, 32, 3), np.uint8))
    assert ok
    mp4v = write_mp4(root / "mp4v.mp4", noisy_frames(72, 128, 10), codec="mp4v").read_bytes()
    files = {
        "zero-byte": b"",
        "text": b"this is not a video\n" * 50,
        "jpeg": jpeg.tobytes(),
        # The index (moov) at the end, as OpenCV's mp4v writer puts it: cut off, nothing can be located.
        "truncated-no-index": mp4v[:3000],
        "garbage-after-header": data[:200] + bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8)),
    }
    paths = {name: root / f"{name}.mp4" for name in files}
    for name, content in files.items():
        paths[name].write_bytes(content)
    paths["missing"] = root / "does-not-exist.mp4"
    return paths


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("orientation", ["portrait", "landscape"])
def test_frames_are_rgb_and_the_requested_ones(clips: dict[str, Path], backend: str, orientation: str) -> None:
    wanted = [0, 1, 2, 17, 39]
    clip = read_frames(clips[orientation], wanted, backend=backend)
    width, height = (72, 128) if orientation == "portrait" else (128, 72)
    assert (clip.backend, clip.indices, clip.missing) == (backend, wanted, [])
    assert (clip.num_frames, clip.fps, clip.width, clip.height) == (NUM_FRAMES, 25.0, width, height)
    for index, frame in zip(clip.indices, clip.frames):
        assert frame.shape == (height, width, 3) and frame.dtype == np.uint8
        assert decoded_index(frame) == index
        np.testing.assert_allclose(top_colour(frame), COLOURS[index % 3], atol=12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsorted_and_duplicate_indices(clips: dict[str, Path], backend: str) -> None:
    clip = read_frames(clips["portrait"], [17, 3, 17, 0, 3], backend=backend)
    assert clip.indices == [0, 3, 17]
    assert [decoded_index(f) for f in clip.frames] == [0, 3, 17]


@pytest.mark.parametrize("backend", BACKENDS)
def test_indices_past_the_end_are_missing(clips: dict[str, Path], backend: str) -> None:
    clip = read_frames(clips["landscape"], [100, 5, 39, 40], backend=backend)
    assert (clip.indices, clip.missing, clip.num_frames) == ([5, 39], [40, 100], NUM_FRAMES)
    assert [decoded_index(f) for f in clip.frames] == [5, 39]


@pytest.mark.parametrize("backend", BACKENDS)
def test_nothing_present_still_validates_and_sizes(clips: dict[str, Path], backend: str) -> None:
    clip = read_frames(clips["portrait"], [500], backend=backend)
    assert (clip.indices, clip.frames, clip.missing) == ([], [], [500])
    assert (clip.width, clip.height) == (72, 128)


def test_negative_index_is_a_caller_error(clips: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="-1"):
        read_frames(clips["portrait"], [-1, 3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe(clips: dict[str, Path], backend: str) -> None:
    info = probe(clips["landscape"], backend=backend)
    assert (info.num_frames, info.fps, info.width, info.height) == (NUM_FRAMES, 25.0, 128, 72)
    assert info.backend == backend


def test_backends_give_the_same_pixels(noisy_clip: Path) -> None:
    wanted = [0, 4, 9, 10, 23, 39]
    by_decord = read_frames(noisy_clip, wanted, backend="decord")
    by_opencv = read_frames(noisy_clip, wanted, backend="opencv")
    assert by_decord.indices == by_opencv.indices == wanted
    for a, b in zip(by_decord.frames, by_opencv.frames):
        diff = np.abs(a.astype(np.int16) - b)
        assert diff.max() <= 2 and diff.mean() < 0.1


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
@pytest.mark.parametrize("kind", ["zero-byte", "text", "jpeg", "truncated-no-index", "garbage-after-header",
                                  "missing"])
def test_unreadable_files_raise_video_error_naming_the_file(bad_files: dict[str, Path], kind: str,
                                                             backend: str) -> None:
    path = bad_files[kind]
    with pytest.raises(VideoError) as caught:
        read_frames(path, [0, 5], backend=backend)
    assert caught.value.path == path and str(path) in str(caught.value)
    assert caught.value.problem
    with pytest.raises(VideoError):
        probe(path, backend=backend)


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_truncated_clip_returns_only_true_frames_or_raises(noisy_clip: Path, tmp_path: Path,
                                                           backend: str) -> None:
    """The first 40% of the bytes: the index still claims 40 frames, the data holds far fewer."""
    truncated = tmp_path / "truncated.mp4"
    data = noisy_clip.read_bytes()
    truncated.write_bytes(data[: int(len(data) * 0.4)])
    wanted = list(range(0, NUM_FRAMES, 3))
    reference = dict(zip(wanted, read_frames(noisy_clip, wanted).frames))
    try:
        clip = read_frames(truncated, wanted, backend=backend)
    except VideoError as exc:
        assert exc.path == truncated
        return
    assert clip.missing, "a 40% file cannot hold every frame"
    assert clip.indices + clip.missing == wanted
    for index, frame in zip(clip.indices, clip.frames):
        assert np.abs(frame.astype(np.int16) - reference[index]).max() <= 2, f"frame {index} is not the original"


def test_auto_falls_back_to_opencv_when_decord_fails(clips: dict[str, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: Path, wanted: list[int], num_threads: int) -> ClipFrames:
        raise VideoError(path, "simulated decode failure")

    monkeypatch.setitem(frames_module._READERS, "decord", broken)
    clip = read_frames(clips["portrait"], [2, 7])
    assert clip.backend == "opencv" and [decoded_index(f) for f in clip.frames] == [2, 7]
    with pytest.raises(VideoError, match="simulated decode failure"):
        read_frames(clips["portrait"], [2], backend="decord")


@pytest.mark.parametrize("width", [16, 24, 32, 40, 48, 72, 96, 136])
def test_decord_decodes_every_width_as_opencv_does(tmp_path: Path, width: int) -> None:
    """FFmpeg pads the rows of some narrow widths, which ones depending on the CPU's vector width.

    The widths cover those padded on AVX2 (16, 24, 48, 72) and on AVX-512 (32, 48, 96) CPUs; decord must
    still return them itself (no fallback) with OpenCV's pixels.
    """
    path = write_mp4(tmp_path / "narrow.mp4", noisy_frames(width, 64, 12, seed=width), gop=5)
    wanted = [1, 7, 11]
    by_decord = read_frames(path, wanted, backend="decord")
    by_opencv = read_frames(path, wanted, backend="opencv")
    assert by_decord.backend == "decord" and by_decord.indices == wanted
    assert (by_decord.width, by_decord.height) == (width, 64)
    for a, b in zip(by_decord.frames, by_opencv.frames):
        assert a.shape == (64, width, 3) and a.flags.c_contiguous
        assert np.abs(a.astype(np.int16) - b).max() <= 2


def test_the_backend_is_a_setting_of_the_entry_points(clips: dict[str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The data layer reads no environment: the batch run takes ``--video-backend`` (its default from
    ``SHOPMATCH_VIDEO_BACKEND``), the service its ``video_backend`` setting (the same variable)."""
    from pipeline.run import _parse_args
    from service.settings import Settings

    monkeypatch.setenv("SHOPMATCH_VIDEO_BACKEND", "opencv")
    assert read_frames(clips["portrait"], [1]).backend == "decord"
    assert _parse_args(["root", "out"]).video_backend == "opencv"
    assert _parse_args(["root", "out", "--video-backend", "decord"]).video_backend == "decord"
    assert Settings().video_backend == "opencv"
    source = Source("clip", "c", (str(clips["portrait"]),), (1,))
    by_opencv = read_frames(clips["portrait"], [1], backend="opencv").frames[0]
    assert np.array_equal(read_source(source, backend="opencv").pictures[0].pixels, by_opencv)
    monkeypatch.setenv("SHOPMATCH_VIDEO_BACKEND", "ffmpeg")
    with pytest.raises(SystemExit):
        _parse_args(["root", "out"])


def test_unknown_backend_is_rejected(clips: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="pyav"):
        read_frames(clips["portrait"], [1], backend="pyav")


def test_read_frames_many_skips_bad_clips_and_keeps_order(clips: dict[str, Path], noisy_clip: Path,
                                                          bad_files: dict[str, Path]) -> None:
    good = [clips["portrait"], bad_files["text"], clips["landscape"], bad_files["missing"], noisy_clip,
            clips["portrait"]]
    issues = IssueLog()
    out = list(read_frames_many(((p, [3, 1, 45]) for p in good), issues, workers=2))
    expected = [clips["portrait"], clips["landscape"], noisy_clip, clips["portrait"]]
    assert [path for path, _ in out] == expected
    for path, clip in out:
        single = read_frames(path, [1, 3, 45])
        assert clip.indices == [1, 3] and clip.missing == [45]
        assert all(np.array_equal(a, b) for a, b in zip(clip.frames, single.frames))
    assert sorted(i.path for i in issues.errors) == sorted(str(bad_files[k]) for k in ("text", "missing"))
    assert len(issues.warnings) == 4 and all("45" in w.problem for w in issues.warnings)


def test_read_frames_many_stops_cleanly_when_the_consumer_stops(clips: dict[str, Path]) -> None:
    items = [(clips["portrait"], [i]) for i in range(10)]
    stream = read_frames_many(items, IssueLog(), workers=2)
    path, first = next(stream)
    stream.close()
    assert path == clips["portrait"] and first.indices == [0]


@pytest.mark.shared_data
def test_real_sample_video() -> None:
    if not SAMPLE_VIDEO.is_file():
        pytest.skip(f"{SAMPLE_VIDEO} not present")
    clip = read_frames(SAMPLE_VIDEO, [80, 100, 1393, 1394, 5000])
    assert (clip.width, clip.height, clip.fps, clip.num_frames) == (768, 432, 10.0, 1394)
    assert (clip.indices, clip.missing) == ([80, 100, 1393], [1394, 5000])
    assert all(f.shape == (432, 768, 3) for f in clip.frames)
    by_opencv = read_frames(SAMPLE_VIDEO, [80, 100], backend="opencv")
    for a, b in zip(clip.frames, by_opencv.frames):
        assert np.abs(a.astype(np.int16) - b).max() <= 2
