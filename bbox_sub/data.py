"""Training and validation samples: every annotated shop image and every annotated clip frame.

Clip frames are decoded once per clip (all annotated frames in one pass) and
stored as JPEG in a frame cache, so a training run of many epochs never
touches the video decoder again and a second run reuses the cache. All boxes
are one class, including instance id 0 (a garment that is not the product).

Augmentation draws from a generator seeded by the sample's position in the
training stream, not by worker state, so the same step sees the same pixels
whatever the number of workers and after a resume.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler

from bbox_sub.resize import resize, to_chw
from dataset.errors import DataError, IssueLog
from dataset.frames import read_frames_many
from dataset.images import read_image, write_image
from dataset.records import Dataset, Instance

FRAME_JPEG_QUALITY = 95


@dataclass(frozen=True)
class Sample:
    """One annotated picture: a shop image or a cached clip frame, with its garment boxes (xyxy pixels)."""

    path: Path
    boxes: np.ndarray
    kind: str  # "image" or "video"
    source: str  # item_id/img_name or video_id@frame, for reports


def _boxes(instances: tuple[Instance, ...]) -> np.ndarray:
    boxes = np.array([inst.box for inst in instances], dtype=np.float32).reshape(-1, 4)
    return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


def _held_out(key: str, fraction: float, seed: int) -> bool:
    """A stable split decision per item or clip id, independent of file order and machine."""
    return zlib.crc32(f"{seed}:{key}".encode()) / 2**32 < fraction


def split_ids(dataset: Dataset, fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Item ids and clip ids held out for validation."""
    items = {i for i in dataset.items if _held_out(f"item:{i}", fraction, seed)}
    videos = {v for v in dataset.videos if _held_out(f"video:{v}", fraction, seed)}
    return items, videos


def image_samples(dataset: Dataset, item_ids: set[str] | None = None) -> list[Sample]:
    """Annotated shop images with at least one box (the seed dropped empty ones)."""
    samples = []
    for item_id, item in dataset.items.items():
        if item_ids is not None and item_id not in item_ids:
            continue
        for image in item.images:
            boxes = _boxes(image.instances or ())
            if len(boxes):
                samples.append(Sample(image.path, boxes, "image", f"{item_id}/{image.img_name}"))
    return samples


def frame_samples(dataset: Dataset, cache_dir: Path, issues: IssueLog, video_ids: set[str] | None = None,
                  workers: int = 2) -> list[Sample]:
    """Annotated clip frames with boxes, decoding each clip at most once into ``cache_dir``."""
    wanted: dict[str, list[tuple[int, np.ndarray]]] = {}
    for video_id, video in dataset.videos.items():
        if video_ids is not None and video_id not in video_ids:
            continue
        frames = [(f.frame_index, _boxes(f.instances)) for f in video.frames or ()]
        frames = [(i, b) for i, b in frames if len(b)]
        if frames:
            wanted[video_id] = frames

    def cached(video_id: str, index: int) -> Path:
        return cache_dir / video_id / f"{index:06d}.jpg"

    to_decode = [(dataset.videos[v].path, [i for i, _ in frames]) for v, frames in wanted.items()
                 if not all(cached(v, i).is_file() for i, _ in frames)]
    ids_by_path = {dataset.videos[v].path: v for v in wanted}
    for path, clip in read_frames_many(to_decode, issues, workers=workers):
        for index, frame in zip(clip.indices, clip.frames):
            write_image(cached(ids_by_path[path], index), frame, quality=FRAME_JPEG_QUALITY)
    samples = []
    for video_id, frames in wanted.items():
        for index, boxes in frames:
            if cached(video_id, index).is_file():
                samples.append(Sample(cached(video_id, index), boxes, "video", f"{video_id}@{index}"))
    return samples


def load_picture(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """The RGB pixels and the boxes clipped to them (annotations sometimes overrun the picture)."""
    image = read_image(sample.path)
    height, width = image.shape[:2]
    boxes = sample.boxes.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    return image, boxes[keep]


class TrainSet(TorchDataset):
    """Indexed by ``(sample index, stream position)`` pairs from ``StreamSampler``; each item carries the seed its
    anchors and proposals are drawn from (``bbox_sub.sampling``), a function of the position like its
    augmentation, and the pictures that had to be skipped for it."""

    def __init__(self, samples: list[Sample], min_sizes: tuple[int, ...], max_size: int, flip_prob: float,
                 seed: int) -> None:
        self.samples = samples
        self.min_sizes = min_sizes
        self.max_size = max_size
        self.flip_prob = flip_prob
        self.seed = seed
        self.unreadable: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, position = key
        rng = np.random.default_rng((self.seed, position))
        short_side = int(self.min_sizes[int(rng.integers(len(self.min_sizes)))])
        flip = rng.random() < self.flip_prob
        sampling_seed = int(rng.integers(2**62))
        skipped: list[str] = []
        image, boxes = self._readable(index, skipped)
        height, width = image.shape[:2]
        pixels = resize(to_chw(image), short_side, self.max_size)
        new_height, new_width = pixels.shape[-2:]
        boxes = boxes * np.array([new_width / width, new_height / height] * 2, dtype=np.float32)
        if flip:
            pixels = pixels.flip(-1)
            boxes = np.stack([new_width - boxes[:, 2], boxes[:, 1], new_width - boxes[:, 0], boxes[:, 3]], 1)
        return {"image": pixels.round().clamp(0, 255).to(torch.uint8),
                "boxes": torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4),
                "labels": torch.ones(len(boxes), dtype=torch.int64), "skipped": skipped,
                "sampling_seed": sampling_seed}

    def _readable(self, index: int, skipped: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The picture of ``index``, or of the next readable sample after it when it cannot be read.

        An unreadable picture is reported (in ``skipped``, which the trainer logs) and replaced rather than
        dropped, so that every rank still trains on a full part of the global batch: a rank with fewer
        pictures would weigh its samples differently, and one with none would leave the others waiting.
        The replacement depends only on the index, so every world size trains on the same pictures.
        """
        for offset in range(len(self.samples)):
            candidate = (index + offset) % len(self.samples)
            if candidate in self.unreadable:
                continue
            try:
                return load_picture(self.samples[candidate])
            except DataError as error:
                self.unreadable.add(candidate)
                skipped.append(str(error))
        raise DataError(self.samples[index].path, "no training picture can be read")


class StreamSampler(Sampler):
    """An endless stream of ``(sample index, position)``: a fresh permutation per epoch, seeded by the epoch.

    Starting at ``start`` reproduces exactly the stream an uninterrupted run
    would have drawn from that position on, which makes resuming exact.

    With several ranks, positions ``[k * batch_size, (k + 1) * batch_size)`` are the global batch of step ``k``
    and each rank draws its own contiguous part of it (``batch_size / world_size`` positions); the ranks
    together draw exactly the stream of one process, so they train on the same samples with the same
    augmentation, and every rank gets the same number per step.
    """

    def __init__(self, size: int, seed: int, start: int = 0, *, batch_size: int = 1, rank: int = 0,
                 world_size: int = 1) -> None:
        if size < 1:
            raise ValueError("no training samples")
        if batch_size % world_size:
            raise ValueError(f"a global batch of {batch_size} does not split into {world_size} equal parts")
        if world_size > 1 and start % batch_size:
            raise ValueError(f"start {start} is not at a global batch boundary (batch {batch_size})")
        self.size = size
        self.seed = seed
        self.start = start
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size

    def _stream(self) -> Iterator[tuple[int, int]]:
        position = self.start
        while True:
            epoch, offset = divmod(position, self.size)
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
            for index in order[offset:].tolist():
                yield index, position
                position += 1

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.world_size == 1:
            yield from self._stream()
            return
        share = self.batch_size // self.world_size
        for index, position in self._stream():
            if (position % self.batch_size) // share == self.rank:
                yield index, position


def keep_list(batch: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """Collate to a list: images of a batch have different sizes and are padded by the model."""
    return batch
