"""Reading sampled frames of a clip: each file is opened and decoded once, frames come back RGB.

Both stages look at the same 16 sparse frames of every clip, so the frames are
decoded once here and shared, instead of re-seeking the file per frame and per
model. Two backends give the same pixels on H.264 clips (the tests check it):

* ``decord`` (the ``decord2`` package): seeks to the keyframe before each wanted
  frame and decodes only what it must; returns RGB directly. Frames are taken
  one at a time, which also lets rows padded by FFmpeg be cut back to the
  frame's width (``_dense_rgb``), so every width decodes on every CPU.
* ``opencv``: one ``cv2.VideoCapture`` that ``grab()``s every frame up to the
  last wanted one and converts (``retrieve()``) only the wanted ones. Seeking
  with ``CAP_PROP_POS_FRAMES`` would re-decode from the keyframe for every
  frame, which is several times slower (``bench/results/decode.json``).

``backend="auto"`` takes decord when it is installed and falls back to OpenCV
for a file that decord cannot open or decode; naming one backend (a run's
``--video-backend``, the service's ``video_backend`` setting, both read from
``$SHOPMATCH_VIDEO_BACKEND`` when not given) means that one and no fallback.

A container's frame count is a claim, not a fact: requested frames that the
file does not really hold come back in ``ClipFrames.missing`` instead of
failing. A file that cannot be read at all raises ``VideoError`` naming it and
the reason. On a damaged file the backends differ: decord fails the whole
request when a wanted frame lies in a damaged or cut-off part, OpenCV stops at
the first frame it cannot decode and reports every later wanted frame missing
(so ``auto`` returns the frames before the damage). Bit errors that still
decode are concealed by FFmpeg in both backends and cannot be detected here.
FFmpeg's own log lines (``Invalid NAL unit size`` ...) are silenced
(``quiet_decoder_logs``): what they would say comes back as ``missing`` or a
``VideoError``. Set ``OPENCV_FFMPEG_LOGLEVEL`` to see them from OpenCV.

Both backends apply a clip's rotation metadata (frames come out upright, as
a player shows them).
"""
from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

from dataset.errors import IssueLog, VideoError
from dataset.prefetch import prefetch

log = logging.getLogger(__name__)

BACKENDS = ("decord", "opencv")


@dataclass(frozen=True)
class VideoInfo:
    """What a clip's container declares; ``num_frames`` may overstate what the file really holds."""

    path: Path
    num_frames: int
    fps: float
    width: int
    height: int
    backend: str


@dataclass(frozen=True)
class ClipFrames:
    """The decoded frames of one clip.

    ``indices`` are the frames returned (sorted, without duplicates) and
    ``frames[i]`` is frame ``indices[i]`` as RGB uint8 ``(height, width, 3)``.
    ``missing`` lists requested frames the file does not hold. ``num_frames``
    is the container's count, lowered to the frames actually decoded when
    decoding ran out before it.
    """

    path: Path
    indices: list[int]
    frames: list[np.ndarray]
    missing: list[int]
    num_frames: int
    fps: float
    width: int
    height: int
    backend: str


def read_frames(path: Path | str, indices: Iterable[int], backend: str = "auto",
                num_threads: int = 0) -> ClipFrames:
    """Decode the given 0-based frame indices of one clip, opening the file once.

    ``num_threads`` is the decoder's thread count (0: the library's choice);
    lower it when several clips are decoded in parallel.
    """
    path = Path(path)
    wanted = _wanted(indices)
    names = resolve_backends(backend)
    _check_file(path)
    quiet_decoder_logs()
    failures: list[str] = []
    for name in names:
        try:
            clip = _READERS[name](path, wanted, num_threads)
        except VideoError as exc:
            failures.append(f"{name}: {exc.problem}")
            continue
        if failures:
            log.warning("%s: read with %s after %s", path, name, "; ".join(failures))
        return clip
    raise VideoError(path, "; ".join(failures))


def probe(path: Path | str, backend: str = "auto") -> VideoInfo:
    """Open a clip and decode its first frame, so an unreadable file fails here and not mid-batch."""
    clip = read_frames(path, [0], backend)
    return VideoInfo(clip.path, clip.num_frames, clip.fps, clip.width, clip.height, clip.backend)


def read_frames_many(items: Iterable[tuple[Path | str, Iterable[int]]], issues: IssueLog,
                     workers: int = 2, backend: str = "auto",
                     num_threads: int = 0) -> Iterator[tuple[Path, ClipFrames]]:
    """Yield ``(path, frames)`` for each ``(path, indices)`` in order, decoding ahead in threads.

    Decoding overlaps whatever the consumer does with the previous clip (the
    decoders release the GIL). At most ``2 * workers`` clips are decoded ahead,
    which bounds memory on long lists. An unreadable clip is recorded in
    ``issues`` as an error and skipped; missing frames are recorded as a warning.
    """
    if workers < 1:
        raise ValueError(f"workers={workers}: need at least 1")

    def decode(item: tuple[Path, list[int]]) -> ClipFrames:
        return read_frames(item[0], item[1], backend, num_threads)

    requests = ((Path(path), list(indices)) for path, indices in items)
    for (path, _), clip in prefetch(decode, requests, workers, ahead=2 * workers):
        if isinstance(clip, VideoError):
            issues.error(clip)
            continue
        if isinstance(clip, Exception):
            raise clip
        if clip.missing:
            issues.warning(path, f"frames {clip.missing} not in the file ({clip.num_frames} frames); dropped")
        yield path, clip


def _wanted(indices: Iterable[int]) -> list[int]:
    wanted = sorted({int(i) for i in indices})
    if wanted and wanted[0] < 0:
        raise ValueError(f"frame indices must be >= 0, got {wanted[0]}")
    return wanted


def resolve_backends(backend: str = "auto") -> list[str]:
    """The backends to try in order: ``auto`` prefers decord and falls back to OpenCV. The entry points take the
    choice as a setting (``--video-backend``, the service's ``video_backend``), not this layer."""
    if backend == "auto":
        return ["decord", "opencv"] if _decord() is not None else ["opencv"]
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: expected 'auto' or one of {BACKENDS}")
    if backend == "decord" and _decord() is None:
        raise ImportError("backend 'decord' needs the decord2 package (pip install decord2)")
    return [backend]


def _check_file(path: Path) -> None:
    """Catch the cases both libraries report only as a vague failure to open."""
    if not path.exists():
        raise VideoError(path, "file not found")
    if not path.is_file():
        raise VideoError(path, "not a file")
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")


@functools.cache
def quiet_decoder_logs() -> None:
    """Keep FFmpeg's log lines out of the terminal, where they would interleave with progress bars.

    OpenCV reads ``OPENCV_FFMPEG_LOGLEVEL`` when it opens its first file (a
    value the user set is kept); decord sets its bundled FFmpeg's level itself.
    """
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    decord = _decord()
    if decord is not None:
        decord.logging.set_level(decord.logging.QUIET)


@functools.cache
def _decord() -> ModuleType | None:
    try:
        import decord
    except ImportError:
        return None
    return decord


_DECORD_LOG_PREFIX = re.compile(r"\[\d{2}:\d{2}:\d{2}\] \S+:\d+: |\[/[^\]]*\] ")


def _decord_problem(exc: Exception, path: Path) -> str:
    """decord's message without source locations, timestamps and the path (``VideoError`` names it)."""
    lines = str(exc).strip().splitlines()
    text = _DECORD_LOG_PREFIX.sub("", lines[0]).replace(str(path), "file").strip() if lines else ""
    return text or type(exc).__name__


def _read_decord(path: Path, wanted: list[int], num_threads: int) -> ClipFrames:
    decord = _decord()
    assert decord is not None
    # DECORDError from the C++ side, RuntimeError for a failed open, AssertionError for 0 frames.
    errors = (decord.DECORDError, RuntimeError, AssertionError)
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads)
    except errors as exc:
        raise VideoError(path, f"cannot open as a video ({_decord_problem(exc, path)})") from exc
    try:
        num_frames = len(reader)
        fps = float(reader.get_avg_fps())
        present = [i for i in wanted if i < num_frames]
        # Frame 0 stands in when nothing wanted is present: it validates the file and gives the size.
        raw = [reader[i].asnumpy() for i in (present or [0])]
    except errors as exc:
        raise VideoError(path, f"decoding failed ({_decord_problem(exc, path)})") from exc
    decoded = [_dense_rgb(frame, path) for frame in raw]
    height, width = decoded[0].shape[:2]
    frames = decoded if present else []
    return ClipFrames(path, present, frames, [i for i in wanted if i >= num_frames],
                      num_frames, fps, width, height, "decord")


def _dense_rgb(frame: np.ndarray, path: Path) -> np.ndarray:
    """One decord frame as dense ``(height, width, 3)`` RGB, dropping the row padding FFmpeg may leave.

    FFmpeg pads a frame's rows to a SIMD-friendly stride for some widths (which
    ones depends on the CPU's vector width); decord then labels the padded rows
    ``(height, width, stride // width)``, and its batch copy refuses them.
    Reading frame by frame and cutting each row to ``3 * width`` bytes gives
    the same pixels as OpenCV at every width.
    """
    if frame.ndim != 3 or frame.dtype != np.uint8:
        raise VideoError(path, f"decoder returned a frame of shape {frame.shape} {frame.dtype}")
    height, width, channels = frame.shape
    if channels == 3:
        return frame
    rows = frame.reshape(height, -1)
    if rows.shape[1] < 3 * width:
        raise VideoError(path, f"decoder returned rows of {rows.shape[1]} bytes for {width} RGB pixels")
    return np.ascontiguousarray(rows[:, :3 * width]).reshape(height, width, 3)


def _open_opencv(path: Path, num_threads: int) -> cv2.VideoCapture:
    # CAP_FFMPEG explicitly: CAP_ANY would read a name with "%" as an image-sequence pattern.
    params = [cv2.CAP_PROP_N_THREADS, num_threads] if num_threads > 0 else []
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params)
    if not capture.isOpened():
        raise VideoError(path, "cannot open as a video (OpenCV/FFmpeg could not read a video stream)")
    return capture


def _read_opencv(path: Path, wanted: list[int], num_threads: int) -> ClipFrames:
    capture = _open_opencv(path, num_threads)
    try:
        declared = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        # An image renamed .mp4 opens as a one-frame stream with no (or a negative) frame count.
        if not 0 < declared < 2**31:
            raise VideoError(path, f"no frame count in the container ({declared:g}); not a video?")
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        size = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        indices, frames, end = _grab_sequential(capture, wanted)
    finally:
        capture.release()
    if end == 0:
        raise VideoError(path, "no frame could be decoded")
    height, width = frames[0].shape[:2] if frames else size
    if end is None:  # every wanted frame was there; the container may even undercount
        num_frames, missing = max(int(declared), max(wanted, default=0) + 1), []
    else:
        num_frames, missing = end, [i for i in wanted if i >= end]
    return ClipFrames(path, indices, frames, missing, num_frames, fps, width, height, "opencv")


def _grab_sequential(capture: cv2.VideoCapture,
                     wanted: list[int]) -> tuple[list[int], list[np.ndarray], int | None]:
    """Decode every frame up to the last wanted one, converting only the wanted ones.

    Returns the indices and RGB frames read, and the number of frames the
    stream really holds if it ended early (``None`` if it did not). Frame 0 is
    always decoded so that a file with no decodable frame is noticed.
    """
    targets = set(wanted)
    indices: list[int] = []
    frames: list[np.ndarray] = []
    for position in range(max(wanted, default=0) + 1):
        if not capture.grab():
            return indices, frames, position
        if position in targets:
            ok, frame = capture.retrieve()
            if not ok or frame is None:
                return indices, frames, position
            indices.append(position)
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    return indices, frames, None


_READERS = {"decord": _read_decord, "opencv": _read_opencv}
