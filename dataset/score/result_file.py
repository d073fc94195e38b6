"""Reading, validating and writing the contest's ``result.json``.

Schema (one key per matched clip; clips without a match are left out)::

    {"<video_id>": {"item_id": "<item_id>", "frame_index": 280,
                    "result": [{"img_name": "1", "item_box": [x1, y1, x2, y2],
                                "frame_box": [x1, y1, x2, y2]}, ...]}}

A malformed file is a ``ResultError`` whose message names the file and the
JSON path of the bad value, e.g. ``result.json [$["000919"].result[0].item_box]:
expected 4 numbers, got 3``, so a submission can be fixed without guessing.

Decisions where the schema is loose:

* ``img_name`` is the image name without extension ("1"). A name with an
  image extension ("1.jpg") is normalised to "1" with a warning rather than
  rejected: the intent is unambiguous, and the warning still tells the author
  that the participants' evaluator (which appends ".json"/".jpg") would not
  find that image.
* Boxes may hold ints or floats; ``x2 < x1`` or ``y2 < y1`` is an error, a
  zero-width box is not (it simply overlaps nothing).
* ``frame_index`` must be a non-negative JSON integer; ``280.0`` and ``"280"``
  are errors, because the contest writes an int and a scorer comparing with
  ``==`` would treat them differently.
* ``result`` must hold at least one entry, each with ``img_name``,
  ``item_box`` and ``frame_box``. Unknown extra fields are ignored.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset.errors import DataError, IssueLog
from dataset.jsonio import write_json_atomic
from dataset.layout import IMAGE_SUFFIXES

Box = tuple[float, float, float, float]


class ResultError(DataError):
    """A malformed result file; ``field`` is the JSON path of the bad value."""


@dataclass(frozen=True, slots=True)
class ResultEntry:
    """One matched pair of a clip: a shop image with the item's box, and the item's box in the frame."""

    img_name: str
    item_box: Box
    frame_box: Box

    def to_dict(self) -> dict[str, Any]:
        """The contest JSON of this entry, boxes as plain ints (truncated, as the contest writes them)."""
        return {"img_name": self.img_name, "item_box": [int(v) for v in self.item_box],
                "frame_box": [int(v) for v in self.frame_box]}


@dataclass(frozen=True, slots=True)
class ClipPrediction:
    """The prediction for one clip: the item it sells, one frame showing it, and the box pairs."""

    video_id: str
    item_id: str
    frame_index: int
    entries: tuple[ResultEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        """The contest JSON value of this clip's key."""
        return {"item_id": self.item_id, "frame_index": int(self.frame_index),
                "result": [e.to_dict() for e in self.entries]}


def _where(video_id: str, *parts: str) -> str:
    """A JSON path such as ``$["000919"].result[0].item_box``; the key is quoted since ids look numeric."""
    return f"$[{json.dumps(video_id, ensure_ascii=False)}]" + "".join(parts)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _box(value: Any, source: Path, where: str) -> Box:
    if not isinstance(value, list):
        raise ResultError(source, f"expected a list [x1, y1, x2, y2], got {_type_name(value)}", where)
    if len(value) != 4:
        raise ResultError(source, f"expected 4 numbers [x1, y1, x2, y2], got {len(value)}", where)
    for k, v in enumerate(value):
        if not _is_number(v):
            raise ResultError(source, f"expected a finite number, got {v!r}", f"{where}[{k}]")
    x1, y1, x2, y2 = value
    if x2 < x1 or y2 < y1:
        raise ResultError(source, f"box {value} has x2 < x1 or y2 < y1", where)
    return (x1, y1, x2, y2)


def _img_name(value: Any, source: Path, where: str, issues: IssueLog | None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ResultError(source, f"expected a non-empty image name string, got {value!r}", where)
    stem, dot, suffix = value.rpartition(".")
    if dot and stem and f".{suffix.lower()}" in IMAGE_SUFFIXES:
        if issues is not None:
            issues.warning(source, f"[{where}] img_name {value!r} has an extension; read as {stem!r} "
                                   f"(the contest writes the name without it)")
        return stem
    return value


def _entry(value: Any, source: Path, where: str, issues: IssueLog | None) -> ResultEntry:
    if not isinstance(value, dict):
        raise ResultError(source, f"expected an object, got {_type_name(value)}", where)
    for name in ("img_name", "item_box", "frame_box"):
        if name not in value:
            raise ResultError(source, "missing field", f"{where}.{name}")
    return ResultEntry(img_name=_img_name(value["img_name"], source, f"{where}.img_name", issues),
                       item_box=_box(value["item_box"], source, f"{where}.item_box"),
                       frame_box=_box(value["frame_box"], source, f"{where}.frame_box"))


def _clip(video_id: str, value: Any, source: Path, issues: IssueLog | None) -> ClipPrediction:
    where = _where(video_id)
    if not isinstance(value, dict):
        raise ResultError(source, f"expected an object, got {_type_name(value)}", where)
    for name in ("item_id", "frame_index", "result"):
        if name not in value:
            raise ResultError(source, "missing field", _where(video_id, f".{name}"))
    item_id, frame_index, result = value["item_id"], value["frame_index"], value["result"]
    if not isinstance(item_id, str) or not item_id:
        raise ResultError(source, f"expected a non-empty item id string, got {item_id!r}",
                          _where(video_id, ".item_id"))
    if not isinstance(frame_index, int) or isinstance(frame_index, bool) or frame_index < 0:
        raise ResultError(source, f"expected a non-negative integer, got {frame_index!r}",
                          _where(video_id, ".frame_index"))
    if not isinstance(result, list):
        raise ResultError(source, f"expected a list, got {_type_name(result)}", _where(video_id, ".result"))
    if not result:
        raise ResultError(source, "empty list: a matched clip needs at least one entry",
                          _where(video_id, ".result"))
    entries = tuple(_entry(e, source, _where(video_id, f".result[{k}]"), issues) for k, e in enumerate(result))
    return ClipPrediction(video_id, item_id, frame_index, entries)


def validate_result(obj: Any, source: Path | str, issues: IssueLog | None = None) -> dict[str, ClipPrediction]:
    """Check a parsed result against the schema and type it; ``source`` names the file in errors.

    Warnings (a normalised ``img_name``) go to ``issues`` when given.
    """
    source = Path(source)
    if not isinstance(obj, dict):
        raise ResultError(source, f"top level is {_type_name(obj)}, expected an object keyed by video id", "$")
    return {str(video_id): _clip(str(video_id), value, source, issues) for video_id, value in obj.items()}


def load_result(path: Path | str, issues: IssueLog | None = None) -> dict[str, ClipPrediction]:
    """Read and validate a result file into typed predictions keyed by video id."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultError(path, f"unreadable: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultError(path, f"not valid JSON: {exc}") from None
    return validate_result(data, path, issues)


def _plain(value: Any) -> Any:
    """Numpy scalars and arrays, tuples and records turned into JSON's plain types, nothing else changed.

    Values are not coerced (a string frame index stays a string), so the
    validation that follows still reports them with their JSON path.
    """
    if isinstance(value, ClipPrediction):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return value


def write_result(path: Path | str, result: Mapping[str, ClipPrediction | Mapping[str, Any]]) -> Path:
    """Write a result atomically with plain ints and strings, after validating what will be written.

    Values may be ``ClipPrediction`` records or dicts holding numpy scalars or
    arrays. Validating before writing means a file written here always loads
    back, and a broken prediction fails here, naming its JSON path. Box
    coordinates are truncated to ints, as the contest's writers did.
    """
    path = Path(path)
    typed = validate_result(_plain(result), path)
    return write_json_atomic(path, {video_id: typed[video_id].to_dict() for video_id in sorted(typed)})
