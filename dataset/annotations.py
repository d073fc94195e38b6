"""Parsing and writing the contest's annotation JSON files.

Real files are messier than the schema: ids and viewpoints written as floats
(``20000101.0``), NaN viewpoint/display, label synonyms, empty boxes, boxes
poking outside the image. This module turns all of that into clean
``dataset.records`` and is the only place that knows the JSON field names, so
the synthetic generator writes exactly what the parser reads.

What is dropped with a warning: empty boxes, boxes with NaN coordinates,
degenerate boxes (no area after clipping). What is clipped: boxes outside the
image, when the image size is known (the ``width``/``height`` fields, or the
size passed in). What is an ``AnnotationError`` naming the file and field: a
file that is not JSON, a missing or mistyped field, a non-numeric box.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dataset.boxes import clip_box, is_degenerate
from dataset.errors import AnnotationError, IssueLog
from dataset.labels import canonical_label, category_index
from dataset.records import AnnotatedFrame, Instance, ShopImage, Video

INSTANCE_FIELDS = ("label", "viewpoint", "display", "instance_id", "box")


def _load_json(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AnnotationError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(path, f"unreadable: {exc}") from None
    if not text.strip():
        raise AnnotationError(path, "empty file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AnnotationError(path, f"top level is {type(data).__name__}, expected an object")
    return data


def _is_missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _optional_int(value: Any, path: Path, field: str) -> int | None:
    """Viewpoint and display: int, float, NaN or absent in real files."""
    if _is_missing(value):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise AnnotationError(path, f"expected a number, got {value!r}", field) from None


def _required_int(value: Any, path: Path, field: str) -> int:
    number = _optional_int(value, path, field)
    if number is None:
        raise AnnotationError(path, "missing value", field)
    return number


def _parse_box(value: Any, path: Path, field: str) -> list[float] | None:
    """The four coordinates, or ``None`` for an empty/NaN box (dropped by the caller)."""
    if _is_missing(value) or (isinstance(value, (list, tuple)) and len(value) == 0):
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise AnnotationError(path, f"expected [x1, y1, x2, y2], got {value!r}", field)
    coords: list[float] = []
    for v in value:
        if _is_missing(v):
            return None
        try:
            coords.append(float(v))
        except (TypeError, ValueError):
            raise AnnotationError(path, f"non-numeric coordinate {v!r}", field) from None
    return coords


def parse_instance(raw: Any, path: Path, where: str, size: tuple[int, int] | None,
                   issues: IssueLog) -> Instance | None:
    """One annotation entry; ``None`` when its box is unusable (a warning is logged)."""
    if not isinstance(raw, dict):
        raise AnnotationError(path, f"expected an object, got {type(raw).__name__}", where)
    if "box" not in raw:
        raise AnnotationError(path, "missing field", f"{where}.box")
    box = _parse_box(raw["box"], path, f"{where}.box")
    if box is None:
        issues.warning(path, f"{where}: empty box dropped")
        return None
    x1, y1, x2, y2 = box
    if size is not None:
        clipped = clip_box(box, *size)
    else:
        clipped = (int(max(x1, 0)), int(max(y1, 0)), int(max(x2, 0)), int(max(y2, 0)))
    if is_degenerate(clipped):
        issues.warning(path, f"{where}: degenerate box {box} dropped")
        return None
    if clipped != tuple(int(v) for v in box):
        issues.warning(path, f"{where}: box {box} clipped to {list(clipped)}")
    label = raw.get("label")
    label = "" if _is_missing(label) else str(label)
    instance_id = raw.get("instance_id", None)
    if "instance_id" not in raw:
        raise AnnotationError(path, "missing field", f"{where}.instance_id")
    return Instance(
        box=clipped,
        instance_id=_optional_int(instance_id, path, f"{where}.instance_id") or 0,
        label=canonical_label(label),
        category=category_index(label),
        viewpoint=_optional_int(raw.get("viewpoint"), path, f"{where}.viewpoint"),
        display=_optional_int(raw.get("display"), path, f"{where}.display"),
    )


def _parse_instances(raw: Any, path: Path, where: str, size: tuple[int, int] | None,
                     issues: IssueLog) -> tuple[Instance, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise AnnotationError(path, f"expected a list, got {type(raw).__name__}", where)
    parsed = (parse_instance(entry, path, f"{where}[{k}]", size, issues) for k, entry in enumerate(raw))
    return tuple(inst for inst in parsed if inst is not None)


def _size(data: dict[str, Any], path: Path, fallback: tuple[int, int] | None) -> tuple[int, int] | None:
    if "width" in data and "height" in data:
        return _required_int(data["width"], path, "width"), _required_int(data["height"], path, "height")
    return fallback


def parse_image_annotation(path: Path | str, image_path: Path | None = None,
                           size: tuple[int, int] | None = None,
                           issues: IssueLog | None = None) -> ShopImage:
    """Parse ``image_annotation/<item_id>/<n>.json`` into a ``ShopImage``.

    ``image_path`` defaults to ``<root>/image/<item_id>/<img_name>`` of the
    contest layout; ``size`` (width, height) is used for clipping when the
    file does not carry its own.
    """
    path = Path(path)
    issues = issues if issues is not None else IssueLog()
    data = _load_json(path)
    item_id = str(data.get("item_id") or path.parent.name)
    img_name = str(data.get("img_name") or f"{path.stem}.jpg")
    if item_id != path.parent.name:
        issues.warning(path, f"item_id {item_id!r} differs from its folder {path.parent.name!r}; folder wins")
        item_id = path.parent.name
    dims = _size(data, path, size)
    if image_path is None:
        image_path = path.parents[2] / "image" / item_id / img_name
    return ShopImage(
        item_id=item_id,
        img_name=img_name,
        path=image_path,
        annotation_path=path,
        instances=_parse_instances(data.get("annotations"), path, "annotations", dims, issues),
        width=dims[0] if dims else None,
        height=dims[1] if dims else None,
    )


def parse_video_annotation(path: Path | str, video_path: Path | None = None,
                           size: tuple[int, int] | None = None,
                           issues: IssueLog | None = None) -> Video:
    """Parse ``video_annotation/<video_id>.json`` into a ``Video`` (frames sorted by index)."""
    path = Path(path)
    issues = issues if issues is not None else IssueLog()
    data = _load_json(path)
    video_id = str(data.get("video_id") or path.stem)
    if video_id != path.stem:
        issues.warning(path, f"video_id {video_id!r} differs from the file name; file name wins")
        video_id = path.stem
    dims = _size(data, path, size)
    raw_frames = data.get("frames")
    if not isinstance(raw_frames, list):
        raise AnnotationError(path, f"expected a list, got {type(raw_frames).__name__}", "frames")
    frames: dict[int, AnnotatedFrame] = {}
    for k, raw in enumerate(raw_frames):
        where = f"frames[{k}]"
        if not isinstance(raw, dict):
            raise AnnotationError(path, f"expected an object, got {type(raw).__name__}", where)
        index = _required_int(raw.get("frame_index"), path, f"{where}.frame_index")
        instances = _parse_instances(raw.get("annotations"), path, f"{where}.annotations", dims, issues)
        if index in frames:
            issues.warning(path, f"{where}: frame_index {index} repeated; annotations merged")
            instances = frames[index].instances + instances
        frames[index] = AnnotatedFrame(index, instances)
    if video_path is None:
        video_path = path.parents[1] / "video" / f"{video_id}.mp4"
    return Video(
        video_id=video_id,
        path=video_path,
        annotation_path=path,
        frames=tuple(frames[i] for i in sorted(frames)),
        width=dims[0] if dims else None,
        height=dims[1] if dims else None,
    )


def instance_dict(instance: Instance) -> dict[str, Any]:
    """The contest JSON of one box (plain ints, official label spelling)."""
    return {
        "label": instance.label,
        "viewpoint": instance.viewpoint,
        "display": instance.display,
        "instance_id": int(instance.instance_id),
        "box": [int(v) for v in instance.box],
    }


def image_annotation_dict(image: ShopImage) -> dict[str, Any]:
    """The contest JSON of one shop image's annotations."""
    data: dict[str, Any] = {"item_id": image.item_id, "img_name": image.img_name}
    if image.width is not None and image.height is not None:
        data.update(width=int(image.width), height=int(image.height))
    data["annotations"] = [instance_dict(i) for i in image.instances or ()]
    return data


def video_annotation_dict(video: Video) -> dict[str, Any]:
    """The contest JSON of one clip's annotated frames."""
    data: dict[str, Any] = {"video_id": video.video_id}
    if video.width is not None and video.height is not None:
        data.update(width=int(video.width), height=int(video.height))
    data["frames"] = [
        {"frame_index": int(f.frame_index), "annotations": [instance_dict(i) for i in f.instances]}
        for f in video.frames or ()
    ]
    return data
