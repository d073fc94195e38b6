"""The boxes file a batch run writes (``OUT/boxes.json``: the detector's boxes), as validated models.

Layout (``format`` ``bbox_sub.boxes``, ``version`` 1)::

    {"format": "bbox_sub.boxes", "version": 1, "config": "seed_vovnet99", "weights": "...",
     "settings": {...the InferConfig used...},
     "processed": {"images": 1234, "videos": 56},
     "skipped": [{"path": ".../video/000017.mp4", "problem": "empty file (0 bytes)"}],
     "resumed": {"images": 0, "videos": 0},
     "missing_frames": [{"video_id": "000021", "file": ".../video/000021.mp4", "frames": [200, 220],
                         "file_frames": 191}],
     "images": [{"type": "image", "item_id": "000013", "img_name": "0.jpg", "file": "/abs/.../image/000013/0.jpg",
                 "width": 800, "height": 800, "bbox": [x1, y1, x2, y2], "score": 0.987,
                 "bbox_aspect": 0.61, "aspect_group": 5}, ...],
     "videos": [{"type": "video", "video_id": "000013", "frame": 80, "file": "/abs/.../video/000013.mp4",
                 "width": 540, "height": 960, "bbox": [...], "score": 0.991,
                 "bbox_aspect": 0.72, "aspect_group": 6}, ...]}

Boxes are ints (truncated, clipped to the picture, at least one pixel wide
and high), best score first within a picture; ``aspect_group`` indexes
``dataset.boxes.ASPECT_TEMPLATES``. ``resumed`` counts the files an
interrupted earlier run had finished; ``missing_frames`` lists, per clip, the
sampled frames its file does not hold (``file_frames``: what it does). Both
are optional, for files written before them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, StrictInt, ValidationError, model_validator

from dataset.boxes import ASPECT_TEMPLATES
from dataset.config import StrictModel

FORMAT = "bbox_sub.boxes"
VERSION = 1


class _Record(StrictModel):
    pass


class _Box(_Record):
    file: str
    width: StrictInt = Field(gt=0)
    height: StrictInt = Field(gt=0)
    bbox: tuple[StrictInt, StrictInt, StrictInt, StrictInt]
    score: float = Field(ge=0, le=1)
    bbox_aspect: float = Field(gt=0)
    aspect_group: StrictInt = Field(ge=0, lt=len(ASPECT_TEMPLATES))

    @model_validator(mode="after")
    def _inside(self) -> _Box:
        x1, y1, x2, y2 = self.bbox
        if not (0 <= x1 < x2 <= self.width and 0 <= y1 < y2 <= self.height):
            raise ValueError(f"bbox {list(self.bbox)} is empty or outside the {self.width}x{self.height} picture")
        return self


class ImageBox(_Box):
    type: Literal["image"]
    item_id: str
    img_name: str


class VideoBox(_Box):
    type: Literal["video"]
    video_id: str
    frame: StrictInt = Field(ge=0)


class Skipped(_Record):
    path: str
    problem: str


class MissingFrames(_Record):
    video_id: str
    file: str
    frames: list[StrictInt]
    file_frames: StrictInt


class BoxesFile(_Record):
    format: Literal["bbox_sub.boxes"]
    version: Literal[1]
    config: str
    weights: str
    settings: dict[str, Any]
    processed: dict[Literal["images", "videos"], StrictInt]
    skipped: list[Skipped]
    resumed: dict[Literal["images", "videos"], StrictInt] = Field(default_factory=lambda: {"images": 0, "videos": 0})
    missing_frames: list[MissingFrames] = Field(default_factory=list)
    images: list[ImageBox]
    videos: list[VideoBox]


class BoxesSchemaError(ValueError):
    """A boxes file that does not follow the schema; the message names the first bad location."""


def validate_boxes(data: dict[str, Any], source: str = "boxes") -> BoxesFile:
    try:
        return BoxesFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" ({len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise BoxesSchemaError(f"{source}: {where}: {first['msg']}{more}") from None


def load_boxes(path: Path | str) -> BoxesFile:
    """Read and validate a boxes file (what ``python -m service rebuild --run`` reads)."""
    path = Path(path)
    return validate_boxes(json.loads(path.read_text(encoding="utf-8")), str(path))
