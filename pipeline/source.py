"""One source (a shop item's image folder or a clip) from its files to its box vectors: read, detect, crop, embed.

The batch run, the distributed engine and the service all take a source through these steps, so it gets the same
boxes and vectors whichever way it came in. A source's pictures are decoded once: the detector and the crops read
the same arrays. Problems with the data are returned as issues (or raised as ``DataError``), never as HTTP errors:
how to answer them is the caller's business.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bbox_sub.config import InferConfig
from bbox_sub.detect import BatchDetector, Detections
from bbox_sub.infer import box_records
from dataset.errors import DataError, Issue, IssueLog
from dataset.frames import read_frames
from dataset.images import read_image
from dataset.records import Dataset
from metric_sub.buckets import crop
from metric_sub.data import CropRef, ground_truth_crops
from metric_sub.embed import ModelRunner, embed_crops

SourceKind = Literal["item", "clip"]
REF_KIND: dict[SourceKind, str] = {"item": "image", "clip": "video"}
"""The kind a box of a source carries in its rows (the contest's words: shop images and video frames)."""


@dataclass(frozen=True)
class Source:
    """What to read for one item or clip: its files, and for a clip the frames to sample.

    ``given`` holds boxes known in advance (the annotations, for a matching-only run); without them the
    detector finds the boxes.
    """

    kind: SourceKind
    source_id: str
    files: tuple[str, ...]
    frames: tuple[int, ...] = ()
    given: tuple[CropRef, ...] | None = None

    def describe(self) -> dict[str, Any]:
        """What the source's boxes and vectors depend on besides the models (its store key's part)."""
        return {"kind": self.kind, "id": self.source_id, "files": list(self.files), "frames": list(self.frames),
                "given": None if self.given is None else [r.to_json() for r in self.given]}


@dataclass
class Picture:
    """One decoded picture of a source: a shop image (``frame`` None) or a sampled clip frame."""

    path: str
    name: str
    frame: int | None
    pixels: np.ndarray


@dataclass
class SourcePictures:
    """A source's decoded pictures, with what could not be read (unreadable images, frames the clip lacks)."""

    source: Source
    pictures: list[Picture]
    issues: list[Issue] = field(default_factory=list)
    missing: dict[str, Any] | None = None
    """A clip's sampled frames its file does not hold: ``{"frames": [...], "file_frames": N}``."""


@dataclass
class PreparedSource:
    """A source's boxes and their crops, its decoded pictures let go: what waits to be embedded."""

    source: Source
    refs: list[CropRef]
    crops: list[np.ndarray]
    records: list[dict[str, Any]]
    issues: list[Issue]
    missing: dict[str, Any] | None
    pictures: int


@dataclass
class EncodedSource:
    """A source's boxes and their vectors: what the gallery, the matcher and the store keep.

    ``records`` are the detector's boxes in the boxes-file schema (empty for given boxes); ``refs[i]`` is the box
    of ``vectors[i]``.
    """

    source: Source
    refs: list[CropRef]
    vectors: np.ndarray
    records: list[dict[str, Any]] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    missing: dict[str, Any] | None = None
    pictures: int = 0


def dataset_sources(data: Dataset, frames: Sequence[int]) -> list[Source]:
    """Every item (its shop images) and every clip (its sampled ``frames``) of a dataset, items first."""
    items = [Source("item", item.item_id, tuple(str(image.path) for image in item.images))
             for item in data.items.values()]
    clips = [Source("clip", video.video_id, (str(video.path),), tuple(frames)) for video in data.videos.values()]
    return items + clips


def annotated_sources(data: Dataset) -> list[Source]:
    """The annotated boxes of every shop image and clip frame as sources with given boxes (matching only)."""
    by_source: dict[tuple[str, str], list[CropRef]] = {}
    for ref in ground_truth_crops(data, min_frame=0, include_unlabelled=True):
        by_source.setdefault((ref.kind, ref.source_id), []).append(ref)
    sources = []
    for (kind, source_id), refs in by_source.items():
        files = tuple(dict.fromkeys(r.path for r in refs))
        frames = tuple(sorted({r.frame for r in refs if r.frame is not None}))
        sources.append(Source("item" if kind == "image" else "clip", source_id, files, frames, tuple(refs)))
    return sources


def read_source(source: Source, *, decoder_threads: int = 0, backend: str = "auto",
                on_unreadable_image: Callable[[DataError], None] | None = None) -> SourcePictures:
    """Decode a source's pictures once. An unreadable clip raises ``DataError``; an unreadable shop image is an
    issue and the item keeps its other images, unless ``on_unreadable_image`` (which may raise) takes it."""
    if source.kind == "clip":
        clip = read_frames(source.files[0], source.frames, backend, decoder_threads)
        pictures = [Picture(str(clip.path), "", index, frame) for index, frame in zip(clip.indices, clip.frames)]
        missing = {"frames": clip.missing, "file_frames": clip.num_frames} if clip.missing else None
        return SourcePictures(source, pictures, missing=missing)
    issues = IssueLog()
    pictures = []
    for path in source.files:
        try:
            pictures.append(Picture(path, Path(path).name, None, read_image(path)))
        except DataError as exc:
            (on_unreadable_image or issues.error)(exc)
    return SourcePictures(source, pictures, issues.issues)


def detected_boxes(source: Source, pictures: Sequence[Picture], found: Sequence[Detections],
                   settings: InferConfig) -> tuple[list[CropRef], list[dict[str, Any]]]:
    """The detector's boxes over the source's score threshold, as crop refs and as boxes-file records."""
    refs, records = [], []
    kind = REF_KIND[source.kind]
    threshold = settings.image_score_thresh if source.kind == "item" else settings.video_score_thresh
    for picture, detections in zip(pictures, found):
        height, width = picture.pixels.shape[:2]
        if source.kind == "item":
            fields: dict[str, Any] = {"type": "image", "item_id": source.source_id, "img_name": picture.name,
                                      "file": picture.path}
        else:
            fields = {"type": "video", "video_id": source.source_id, "frame": picture.frame, "file": picture.path}
        for record in box_records(detections, threshold, width, height, fields):
            records.append(record)
            refs.append(CropRef(kind, source.source_id, picture.path, picture.frame, tuple(record["bbox"]),
                                record["aspect_group"], 0, record["score"]))
    return refs, records


def cut_crops(refs: Sequence[CropRef], pictures: Sequence[Picture],
              issues: IssueLog) -> tuple[list[CropRef], list[np.ndarray]]:
    """The boxes' pixels from the decoded pictures; a box with nothing inside its picture is an issue."""
    by_key = {(p.path, p.frame): p.pixels for p in pictures}
    kept, crops = [], []
    for ref in refs:
        pixels = by_key.get((ref.path, ref.frame))
        if pixels is None:
            continue  # its picture could not be read: the source's issues say so
        patch = crop(pixels, ref.box)
        if patch is None:
            issues.warning(ref.path, f"box {list(ref.box)} is empty inside the image; skipped")
            continue
        kept.append(ref)
        crops.append(np.ascontiguousarray(patch))
    return kept, crops


class SourceEncoder:
    """The detector and the embedders, loaded once, that turn sources into box vectors (detectron2's
    ``DefaultPredictor``, for a whole source).

    ``prepare`` finds a source's boxes and cuts their crops, so its decoded pictures can go; ``embed`` embeds the
    crops of several prepared sources together, in one-bucket batches. Without a detector only sources with given
    boxes can be encoded.
    """

    def __init__(self, *, runners: Sequence[ModelRunner], detector: BatchDetector | None = None,
                 infer: InferConfig | None = None) -> None:
        if detector is not None and infer is None:
            raise ValueError("a detector needs its inference settings (infer)")
        self.runners = list(runners)
        self.detector = detector
        self.infer = infer
        self.dim = sum(r.dim for r in self.runners)

    def detect(self, read: SourcePictures) -> list[Detections]:
        """The detector's findings per picture: shop images in batches of ``infer.image_batch``, a clip's
        sampled frames as one batch."""
        if self.detector is None or self.infer is None:
            raise ValueError(f"{read.source.kind} {read.source.source_id}: no detector loaded and no given boxes")
        settings = self.infer
        pixels = [p.pixels for p in read.pictures]
        if read.source.kind == "clip":
            return self.detector(pixels, settings.video_short_side, settings.video_max_size)
        found: list[Detections] = []
        for start in range(0, len(pixels), settings.image_batch):
            found += self.detector(pixels[start:start + settings.image_batch], settings.image_short_side,
                                   settings.image_max_size)
        return found

    def prepare(self, read: SourcePictures) -> PreparedSource:
        """The source's boxes (given, or the detector's) and their crops."""
        if read.source.given is not None:
            refs, records = list(read.source.given), []
        else:
            refs, records = detected_boxes(read.source, read.pictures, self.detect(read), self.infer)
        issues = IssueLog(list(read.issues))
        kept, crops = cut_crops(refs, read.pictures, issues)
        return PreparedSource(read.source, kept, crops, records, issues.issues, read.missing, len(read.pictures))

    def embed(self, prepared: Sequence[PreparedSource]) -> list[EncodedSource]:
        """The vectors of prepared sources' crops, all embedded together."""
        crops = [c for p in prepared for c in p.crops]
        vectors = embed_crops(self.runners, crops, [r.group for p in prepared for r in p.refs])
        encoded, start = [], 0
        for p in prepared:
            encoded.append(EncodedSource(p.source, p.refs, vectors[start:start + len(p.refs)], p.records,
                                         p.issues, p.missing, p.pictures))
            start += len(p.refs)
        return encoded

    def encode(self, reads: Sequence[SourcePictures]) -> list[EncodedSource]:
        """Boxes and vectors of decoded sources."""
        return self.embed([self.prepare(read) for read in reads])


def source_rows(encoded: Iterable[EncodedSource]) -> list[dict[str, Any]]:
    """The embeddings file's row per box, in order: the ref plus ``item_id`` or ``video_id``."""
    rows = []
    for item in encoded:
        for ref in item.refs:
            row = ref.to_json()
            row["item_id" if ref.kind == "image" else "video_id"] = ref.source_id
            rows.append(row)
    return rows
