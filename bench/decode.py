"""Decode benchmark: the 16 sparse frames the pipeline samples from a clip, per decoding method.

Run from the repository root::

    python -m bench.decode [--out bench/results/decode.json] [--frames 400]
                           [--width 540 --height 960] [--extra-sizes 768x432] [--repeats 3]

It writes its own live-stream-like H.264 clip (25 fps, a keyframe every 50
frames, moving shapes over a panning gradient with sensor noise) for each size
and times, per clip:

* ``decord``: ``read_frames(backend="decord")``, the default reader (frame by frame);
* ``decord-batch``: decord's ``get_batch`` over the same frames, the reader's former way
  (it refuses the widths whose rows FFmpeg pads);
* ``opencv-sequential``: ``read_frames(backend="opencv")``, one capture, grab/retrieve;
* ``opencv-seek``: one capture, ``CAP_PROP_POS_FRAMES`` before every frame (the
  original solution's way, kept here only as the baseline);
* ``decord-all`` and ``opencv-all``: every frame decoded, for the raw decode rate.

Methods are timed in interleaved rounds (median of ``--repeats``), so load from
other processes does not favour one of them; ``cpu_ms_per_clip`` (all decoder
threads) is the cost that stays comparable when the machine is busy. Every method's sampled frames are
compared with decord's (``max_diff``), so a fast method that returns other
pixels shows up in the table.
"""
from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from bench.common import measure_interleaved, print_table, write_result
from dataset.frames import read_frames
from dataset.video_write import Mp4Writer

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "decode.json"
COLUMNS = ["size", "method", "frames", "ms_per_clip", "cpu_ms_per_clip", "frames_per_s", "max_diff", "same_pixels",
           "refused"]
SAME_PIXELS_TOLERANCE = 2
"""Largest per-channel difference still counted as the same pixels (YUV to RGB rounding)."""

Frames = dict[int, np.ndarray]
Method = Callable[[Path, list[int]], tuple[int, Frames]]
"""Decodes a clip; returns the number of frames it delivered and the sampled frames by index."""


def sample_indices(num_frames: int, count: int = 16) -> list[int]:
    """The pipeline's sampling (frames 80, 100, ..., 380 of 400), scaled to shorter test clips."""
    start = num_frames // 5
    step = max(1, (num_frames - start) // count)
    return list(range(start, num_frames, step))[:count]


def synthetic_frames(width: int, height: int, count: int, seed: int = 0) -> Iterator[np.ndarray]:
    """RGB frames that cost an H.264 encoder and decoder about what a live stream does.

    A panning gradient, a few shapes moving at different speeds and +-8 levels
    of noise: flat or static content would compress to nothing and decode
    unrealistically fast.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:2 * width]
    background = np.stack([xx * 255 // (2 * width), yy * 255 // height, (xx + yy) % 256], axis=-1)
    shapes = [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(-6, 6), rng.uniform(-6, 6),
               int(rng.integers(width // 12, width // 4)), tuple(int(c) for c in rng.integers(0, 256, 3)))
              for _ in range(6)]
    for t in range(count):
        offset = (t * 2) % width
        frame = background[:, offset:offset + width].astype(np.uint8)
        for x, y, vx, vy, size, colour in shapes:
            centre = (int(x + vx * t) % width, int(y + vy * t) % height)
            cv2.circle(frame, centre, size, colour, thickness=-1)
            cv2.rectangle(frame, centre, (centre[0] + size, centre[1] + 2 * size), colour[::-1], thickness=-1)
        noise = rng.integers(-8, 9, frame.shape, dtype=np.int16)
        yield np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def make_clip(path: Path, width: int, height: int, num_frames: int, fps: float = 25.0, gop: int = 50) -> str:
    """Write the benchmark clip; returns the codec actually used (mp4v when ffmpeg is missing)."""
    with Mp4Writer(path, width, height, fps=fps, codec="h264", crf=23, gop=gop) as writer:
        for frame in synthetic_frames(width, height, num_frames):
            writer.write(frame)
    return writer.codec


def by_reader(backend: str) -> Method:
    def run(path: Path, indices: list[int]) -> tuple[int, Frames]:
        clip = read_frames(path, indices, backend=backend)
        return len(clip.frames), dict(zip(clip.indices, clip.frames))
    return run


def opencv_seek(path: Path, indices: list[int]) -> tuple[int, Frames]:
    """The baseline: one capture, a ``CAP_PROP_POS_FRAMES`` seek before each frame."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames: Frames = {}
    try:
        for index in indices:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read()
            if ok:
                frames[index] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
    return len(frames), frames


def decord_batch(path: Path, indices: list[int]) -> tuple[int, Frames]:
    """The sampled frames in one ``get_batch`` call."""
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    present = [i for i in indices if i < len(reader)]
    batch = reader.get_batch(present).asnumpy()
    return len(present), {i: batch[k] for k, i in enumerate(present)}


def decord_all(path: Path, indices: list[int]) -> tuple[int, Frames]:
    """Every frame through decord, in chunks so a long clip never sits in memory whole."""
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    wanted, frames, total = set(indices), {}, len(reader)
    for start in range(0, total, 50):
        chunk = list(range(start, min(start + 50, total)))
        batch = reader.get_batch(chunk).asnumpy()
        frames.update({i: batch[k].copy() for k, i in enumerate(chunk) if i in wanted})
    return total, frames


def opencv_all(path: Path, indices: list[int]) -> tuple[int, Frames]:
    """Every frame through one capture, each converted to RGB as a full-clip reader would."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    wanted, frames, total = set(indices), {}, 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            if total in wanted:
                frames[total] = rgb
            total += 1
    finally:
        capture.release()
    return total, frames


METHODS: dict[str, Method] = {
    "decord": by_reader("decord"),
    "decord-batch": decord_batch,
    "opencv-sequential": by_reader("opencv"),
    "opencv-seek": opencv_seek,
    "decord-all": decord_all,
    "opencv-all": opencv_all,
}


def max_diff(frames: Frames, reference: Frames) -> int | None:
    """Largest per-channel difference to the reference frames; ``None`` if a sampled frame is absent."""
    if frames.keys() != reference.keys():
        return None
    return max(int(np.abs(frames[i].astype(np.int16) - reference[i]).max()) for i in reference)


def bench_size(clip: Path, size: str, repeats: int) -> list[dict]:
    """Time every method on one clip in interleaved rounds; an untimed first call gives the pixels to compare."""
    indices = sample_indices(read_frames(clip, [0]).num_frames)
    outputs, rows = {}, []
    for name, method in METHODS.items():
        try:
            outputs[name] = method(clip, indices)
        except Exception as exc:  # a library's own refusal (decord's batch copy of padded rows) is a result too
            if name == "decord":
                raise
            message = str(exc).strip().splitlines()[-1].rsplit("] ", 1)[-1]
            rows.append({"size": size, "method": name, "frames": 0, "refused": message})
    reference = outputs["decord"][1]
    timings = measure_interleaved({name: functools.partial(METHODS[name], clip, indices) for name in outputs},
                                  repeats=repeats, warmup=0)
    for name, (delivered, frames) in outputs.items():
        diff, timing = max_diff(frames, reference), timings[name]
        rows.append({"size": size, "method": name, "frames": delivered,
                     "ms_per_clip": round(timing.seconds * 1000, 2),
                     "cpu_ms_per_clip": round(timing.cpu_seconds * 1000, 2),
                     "frames_per_s": round(delivered / timing.seconds, 1), "max_diff": diff,
                     "same_pixels": diff is not None and diff <= SAME_PIXELS_TOLERANCE})
    order = list(METHODS)
    return sorted(rows, key=lambda row: order.index(row["method"]))


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 768x432") from None
    return width, height


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result path")
    parser.add_argument("--frames", type=int, default=400, help="frames per clip")
    parser.add_argument("--width", type=int, default=540)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--extra-sizes", type=parse_size, nargs="*", default=[(768, 432)], metavar="WxH",
                        help="more clip sizes to time (default: the landscape 768x432); give none to skip")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--gop", type=int, default=50, help="keyframe interval of the clip")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (median reported)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [(args.width, args.height), *args.extra_sizes]
    rows, clips = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        for width, height in sizes:
            size = f"{width}x{height}"
            clip = Path(tmp) / f"clip-{size}.mp4"
            codec = make_clip(clip, width, height, args.frames, args.fps, args.gop)
            clips[size] = {"codec": codec, "bytes": clip.stat().st_size,
                           "kbit_per_s": round(clip.stat().st_size * 8 / 1000 / (args.frames / args.fps))}
            rows += bench_size(clip, size, args.repeats)
    print_table(rows, COLUMNS)
    extra = {"frames": args.frames, "fps": args.fps, "gop": args.gop, "repeats": args.repeats,
             "sample_indices": sample_indices(args.frames), "clips": clips,
             "same_pixels_tolerance": SAME_PIXELS_TOLERANCE}
    print(f"wrote {write_result(args.out, 'decode', rows, extra)}")
    return 0 if all(row.get("same_pixels", True) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
