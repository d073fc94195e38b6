"""Typed records for the contest layout: items, shop images, clips, annotated frames, boxes.

Records are immutable and hold absolute paths, so a record can travel to a
worker process or a later stage without the root it came from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

BoxXYXY = tuple[int, int, int, int]
"""``[x1, y1, x2, y2]`` in absolute pixels of the image or frame, as the contest writes them."""


@dataclass(frozen=True, slots=True)
class Instance:
    """One annotated garment box.

    ``instance_id`` 0 means "a garment that is not the product"; boxes sharing
    an id > 0 are the same product (see ``dataset.identity``). ``viewpoint``
    (0 front, 1 back, 2 left, 3 right) and ``display`` (0 product alone, 1 worn)
    are ``None`` where the file has NaN or nothing.
    """

    box: BoxXYXY
    instance_id: int = 0
    label: str = ""
    category: int = -1
    viewpoint: int | None = None
    display: int | None = None


@dataclass(frozen=True, slots=True)
class ShopImage:
    """A shop image of an item; ``instances`` is ``None`` when it has no annotation file."""

    item_id: str
    img_name: str  # the file name with its extension, e.g. "0.jpg", as annotations write it
    path: Path
    annotation_path: Path | None = None
    instances: tuple[Instance, ...] | None = None
    width: int | None = None
    height: int | None = None

    @property
    def stem(self) -> str:
        """The name result.json uses: the file name without ``.jpg``."""
        return Path(self.img_name).stem


@dataclass(frozen=True, slots=True)
class AnnotatedFrame:
    """One annotated frame of a clip (the contest annotates frames 0, 40, ..., 360)."""

    frame_index: int
    instances: tuple[Instance, ...] = ()


@dataclass(frozen=True, slots=True)
class Item:
    """A shop item: an image folder ``image/<item_id>/``."""

    item_id: str
    images: tuple[ShopImage, ...] = ()
    root: Path | None = None


@dataclass(frozen=True, slots=True)
class Video:
    """A live clip ``video/<video_id>.mp4``; ``frames`` is ``None`` when it has no annotation file."""

    video_id: str
    path: Path
    annotation_path: Path | None = None
    frames: tuple[AnnotatedFrame, ...] | None = None
    width: int | None = None
    height: int | None = None
    root: Path | None = None

    def frame(self, frame_index: int) -> AnnotatedFrame | None:
        """The annotated frame with this index, if the annotation has one."""
        for annotated in self.frames or ():
            if annotated.frame_index == frame_index:
                return annotated
        return None


@dataclass(frozen=True)
class Dataset:
    """Items and clips of one or more dataset roots, keyed by id."""

    roots: tuple[Path, ...]
    items: dict[str, Item] = field(default_factory=dict)
    videos: dict[str, Video] = field(default_factory=dict)

    @property
    def annotated(self) -> bool:
        """Whether any clip carries annotations (test sets carry none)."""
        return any(v.frames is not None for v in self.videos.values())
