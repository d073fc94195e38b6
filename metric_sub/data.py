"""Crops for training, validation and embedding: which boxes, their pixels, and one-bucket batches.

Pixels are read once per source: each shop image once, each clip's wanted
frames in one decode (``dataset.frames``), and every crop of that source is
cut from the same array. Crops are then kept (shrunk to a bounded side) in
memory or in a disk cache, because decoding video dominates the cost of an
epoch otherwise.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from tqdm import tqdm

from dataset.errors import DataError, IssueLog
from dataset.frames import read_frames_many
from dataset.images import read_image
from dataset.records import Dataset
from metric_sub.augment import Augmenter
from metric_sub.buckets import aspect_group, crop, limit_side, resize_to_bucket


@dataclass(frozen=True)
class CropRef:
    """One box to embed: where its pixels are and what it is.

    ``source_id`` is the item id of a shop image or the video id of a clip;
    ``frame`` is ``None`` for shop images. ``instance_id`` is the ground truth
    where known (0 otherwise), ``score`` the detector's (1.0 for ground truth).
    """

    kind: str  # "image" or "video"
    source_id: str
    path: str
    frame: int | None
    box: tuple[int, int, int, int]
    group: int
    instance_id: int = 0
    score: float = 1.0

    @property
    def file(self) -> str:
        """The file name as the contest writes it: ``0.jpg`` for images, ``<video_id>.mp4`` for clips."""
        return Path(self.path).name

    def to_json(self) -> dict:
        row = asdict(self)
        row["box"] = list(self.box)
        row["file"] = self.file
        return row


def ground_truth_crops(data: Dataset, min_frame: int = 80, kinds: Sequence[str] = ("image", "video"),
                       include_unlabelled: bool = False) -> list[CropRef]:
    """Ground-truth boxes as crops: instance_id != 0 (unless asked) and clip frames >= ``min_frame``."""
    refs: list[CropRef] = []
    wanted = (lambda iid: True) if include_unlabelled else (lambda iid: iid != 0)
    if "image" in kinds:
        for item in data.items.values():
            for image in item.images:
                for inst in image.instances or ():
                    if wanted(inst.instance_id) and inst.box[2] > inst.box[0] and inst.box[3] > inst.box[1]:
                        refs.append(CropRef("image", item.item_id, str(image.path), None, tuple(inst.box),
                                            aspect_group(inst.box), inst.instance_id))
    if "video" in kinds:
        for video in data.videos.values():
            for annotated in video.frames or ():
                if annotated.frame_index < min_frame:
                    continue
                for inst in annotated.instances:
                    if wanted(inst.instance_id) and inst.box[2] > inst.box[0] and inst.box[3] > inst.box[1]:
                        refs.append(CropRef("video", video.video_id, str(video.path), annotated.frame_index,
                                            tuple(inst.box), aspect_group(inst.box), inst.instance_id))
    return refs


def iter_crops(refs: Sequence[CropRef], issues: IssueLog, workers: int = 2,
               max_side: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(index into refs, RGB crop)`` for every readable box, each source decoded once.

    Images and clips that cannot be read are recorded in ``issues`` and their
    boxes skipped, so the caller must not assume every index comes back.
    """
    by_source: dict[str, list[int]] = defaultdict(list)
    for index, ref in enumerate(refs):
        by_source[ref.path].append(index)

    def cut(index: int, pixels: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        patch = crop(pixels, refs[index].box)
        if patch is None:
            issues.warning(refs[index].path, f"box {list(refs[index].box)} is empty inside the image; skipped")
            return
        yield index, np.ascontiguousarray(limit_side(patch, max_side) if max_side else patch)

    for path, indices in by_source.items():
        if refs[indices[0]].kind != "image":
            continue
        try:
            pixels = read_image(path)
        except DataError as exc:
            issues.error(exc)
            continue
        for index in indices:
            yield from cut(index, pixels)

    clips = [(path, sorted({refs[i].frame for i in indices}))
             for path, indices in by_source.items() if refs[indices[0]].kind == "video"]
    for path, frames in read_frames_many(clips, issues, workers=workers):
        decoded = dict(zip(frames.indices, frames.frames))
        for index in by_source[str(path)]:
            if refs[index].frame in decoded:
                yield from cut(index, decoded[refs[index].frame])


class CropCache:
    """The crops of a list of refs, extracted once, held in memory or as ``.npy`` files on disk.

    The disk cache is keyed by the refs and the size limit, so a changed
    dataset never reads stale crops.
    """

    def __init__(self, refs: Sequence[CropRef], issues: IssueLog, max_side: int, mode: str = "memory",
                 cache_dir: Path | None = None, workers: int = 2, progress: bool = True) -> None:
        self.mode = mode
        self._memory: dict[int, np.ndarray] = {}
        self._folder: Path | None = None
        if mode == "disk":
            if cache_dir is None:
                raise ValueError("the disk crop cache needs a cache_dir")
            key = hashlib.sha1(json.dumps([[r.path, r.frame, list(r.box)] for r in refs] + [max_side])
                               .encode()).hexdigest()[:16]
            self._folder = Path(cache_dir) / key
            done = self._folder / "index.json"
            if done.is_file():
                self.available = json.loads(done.read_text())
                return
            self._folder.mkdir(parents=True, exist_ok=True)
        found = []
        for index, patch in tqdm(iter_crops(refs, issues, workers, max_side), total=len(refs),
                                 desc="crops", unit="crop", disable=not progress, leave=False):
            found.append(index)
            if self._folder is not None:
                np.save(self._folder / f"{index}.npy", patch)
            else:
                self._memory[index] = patch
        self.available: list[int] = sorted(found)
        if self._folder is not None:
            (self._folder / "index.json").write_text(json.dumps(self.available))

    def __getitem__(self, index: int) -> np.ndarray:
        if self._folder is not None:
            return np.load(self._folder / f"{index}.npy")
        return self._memory[index]


class CropDataset(TorchDataset):
    """Bucket-resized uint8 CHW crops with labels; augmentation depends only on (seed, epoch, index)."""

    def __init__(self, refs: Sequence[CropRef], cache: CropCache, indices: Sequence[int], labels: Sequence[int],
                 sizes: Sequence[tuple[int, int]], augmenter: Augmenter | None = None) -> None:
        self.refs = refs
        self.cache = cache
        self.indices = list(indices)
        self.labels = list(labels)
        self.sizes = list(sizes)
        self.augmenter = augmenter
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    def groups(self) -> list[int]:
        return [self.refs[i].group for i in self.indices]

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        index = self.indices[position]
        patch = resize_to_bucket(self.cache[index], self.sizes[self.refs[index].group])
        if self.augmenter is not None:
            patch = self.augmenter(patch, self.epoch, index)
        return torch.from_numpy(np.ascontiguousarray(patch.transpose(2, 0, 1))), self.labels[position]


class GroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches that each hold one aspect group, in an order fixed by (seed, epoch).

    As detectron2's sampler the seed used: indices are drawn in a random
    order and a group's batch is emitted as soon as it is full. Leftovers are
    dropped when training (``drop_uneven``) and emitted at the end otherwise.
    Because the order is a pure function of (seed, epoch), a resumed run can
    skip the batches it already trained on.
    """

    def __init__(self, groups: Sequence[int], batch_size: int, shuffle: bool, drop_uneven: bool,
                 seed: int = 0) -> None:
        self.groups = list(groups)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_uneven = drop_uneven
        self.seed = seed
        self.epoch = 0

    def batches(self, epoch: int) -> list[list[int]]:
        order: Iterable[int] = range(len(self.groups))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.groups)).tolist()
        pending: dict[int, list[int]] = defaultdict(list)
        out: list[list[int]] = []
        for index in order:
            bucket = pending[self.groups[index]]
            bucket.append(index)
            if len(bucket) == self.batch_size:
                out.append(bucket.copy())
                bucket.clear()
        if not self.drop_uneven:
            out.extend(b for _, b in sorted(pending.items()) if b)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        return len(self.batches(self.epoch))
