"""Writing RGB frames to mp4: real H.264 through the ffmpeg binary that imageio-ffmpeg ships,
or MPEG-4 Part 2 (``mp4v``) through OpenCV when that binary is missing.

The contest clips are H.264 at 25 fps; the generator and the benchmarks write
the same so that decoding is measured on the real codec.
"""
from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

CODECS = ("h264", "mp4v")


def ffmpeg_exe() -> str | None:
    """Path of the bundled ffmpeg binary, or ``None`` when imageio-ffmpeg is not installed."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return None


class Mp4Writer:
    """Streams RGB uint8 frames of one size into an mp4 file.

    ``gop`` is the keyframe interval; ``crf`` the H.264 quality (lower is
    better; 23 is ffmpeg's default, live streams look like 23-30); ``preset``
    the x264 speed/size trade-off (data generators want ``superfast``).
    """

    def __init__(self, path: Path | str, width: int, height: int, fps: float = 25.0,
                 codec: str = "h264", crf: int = 23, gop: int = 50, preset: str = "veryfast") -> None:
        if codec not in CODECS:
            raise ValueError(f"codec {codec!r}: expected one of {CODECS}")
        if width % 2 or height % 2:
            raise ValueError(f"{width}x{height}: H.264 yuv420p needs even width and height")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = (width, height)
        self.frames_written = 0
        exe = ffmpeg_exe() if codec == "h264" else None
        self.codec = "h264" if exe else "mp4v"
        self._proc: subprocess.Popen | None = None
        self._cv: cv2.VideoWriter | None = None
        if exe:
            cmd = [exe, "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
                   "-s", f"{width}x{height}", "-r", f"{fps}", "-i", "-", "-an", "-c:v", "libx264",
                   "-preset", preset, "-crf", str(crf), "-g", str(gop), "-pix_fmt", "yuv420p",
                   "-movflags", "+faststart", str(self.path)]
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        else:
            self._cv = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
            if not self._cv.isOpened():
                raise RuntimeError(f"{self.path}: OpenCV could not open an mp4v writer")

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 frame of the writer's size."""
        if frame.shape[:2] != (self.size[1], self.size[0]) or frame.dtype != np.uint8:
            raise ValueError(f"{self.path}: frame {frame.shape} {frame.dtype}, expected "
                             f"({self.size[1]}, {self.size[0]}, 3) uint8")
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        else:
            assert self._cv is not None
            self._cv.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def close(self) -> None:
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            stderr = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
            if self._proc.wait() != 0:
                raise RuntimeError(f"{self.path}: ffmpeg failed: {stderr.strip()}")
            self._proc = None
        if self._cv is not None:
            self._cv.release()
            self._cv = None

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def write_mp4(path: Path | str, frames: Iterable[np.ndarray], fps: float = 25.0, codec: str = "h264",
              crf: int = 23, gop: int = 50, preset: str = "veryfast") -> Path:
    """Write an iterable of equally sized RGB frames to ``path``; returns the path."""
    writer: Mp4Writer | None = None
    try:
        for frame in frames:
            if writer is None:
                writer = Mp4Writer(path, frame.shape[1], frame.shape[0], fps, codec, crf, gop, preset)
            writer.write(frame)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError(f"{path}: no frames to write")
    return Path(path)
