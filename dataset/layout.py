"""Scanning dataset roots in the contest layout.

A root holds ``image/<item_id>/<n>.jpg`` and ``video/<video_id>.mp4``, and for
training and validation parts also ``image_annotation/`` and
``video_annotation/``. Several roots (``train_dataset_part1`` ...
``part6``) combine into one ``Dataset``. Only file names and annotation JSON
are read here; pixels are decoded later by the stage that needs them, so a
scan of a 5000-clip part takes seconds.

A bad annotation file does not stop the scan: it is recorded in the
``IssueLog`` and its image or clip is kept without annotations, so inference
can still use it. A missing root or a folder that is not a dataset root is a
``DataError`` at once, because nothing useful can follow from it.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from dataset.annotations import parse_image_annotation, parse_video_annotation
from dataset.errors import DataError, IssueLog
from dataset.records import Dataset, Item, ShopImage, Video

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4",)


def natural_key(path: Path) -> tuple[int, int | str]:
    """Sort ``2.jpg`` before ``10.jpg``; non-numeric names after numeric ones."""
    stem = path.stem
    return (0, int(stem)) if re.fullmatch(r"\d+", stem) else (1, stem)


def _files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes
             and not p.name.startswith(".")]
    return sorted(found, key=natural_key)


def check_root(root: Path | str) -> Path:
    """Resolve a root and fail early, naming it, when it is not a dataset root."""
    path = Path(root).expanduser().resolve()
    if not path.exists():
        raise DataError(path, "dataset root not found")
    if not path.is_dir():
        raise DataError(path, "dataset root is not a folder")
    if not (path / "image").is_dir() and not (path / "video").is_dir():
        raise DataError(path, "not a dataset root: it has neither an image/ nor a video/ folder")
    return path


def _read_image(root: Path, item_id: str, image_path: Path, issues: IssueLog) -> ShopImage:
    annotation = root / "image_annotation" / item_id / f"{image_path.stem}.json"
    bare = ShopImage(item_id=item_id, img_name=image_path.name, path=image_path)
    if not annotation.is_file():
        return bare
    try:
        parsed = parse_image_annotation(annotation, image_path=image_path, issues=issues)
    except DataError as exc:
        issues.error(exc)
        return bare
    if parsed.img_name != image_path.name:
        issues.warning(annotation, f"img_name {parsed.img_name!r} differs from the image file "
                                   f"{image_path.name!r}; file name wins")
    return ShopImage(item_id, image_path.name, image_path, annotation, parsed.instances,
                     parsed.width, parsed.height)


def scan_items(root: Path, issues: IssueLog) -> dict[str, Item]:
    """Every item folder of a root with its images, annotations attached where present."""
    items: dict[str, Item] = {}
    image_dir = root / "image"
    if not image_dir.is_dir():
        return items
    for folder in sorted(p for p in image_dir.iterdir() if p.is_dir()):
        images = tuple(_read_image(root, folder.name, p, issues) for p in _files(folder, IMAGE_SUFFIXES))
        if not images:
            issues.warning(folder, "item folder holds no images; skipped")
            continue
        items[folder.name] = Item(folder.name, images, root)
    return items


def scan_videos(root: Path, issues: IssueLog) -> dict[str, Video]:
    """Every clip of a root, with its annotation attached where present."""
    videos: dict[str, Video] = {}
    for path in _files(root / "video", VIDEO_SUFFIXES):
        annotation = root / "video_annotation" / f"{path.stem}.json"
        video = Video(video_id=path.stem, path=path, root=root)
        if annotation.is_file():
            try:
                parsed = parse_video_annotation(annotation, video_path=path, issues=issues)
                video = Video(path.stem, path, annotation, parsed.frames, parsed.width, parsed.height, root)
            except DataError as exc:
                issues.error(exc)
        videos[path.stem] = video
    for orphan in _files(root / "video_annotation", (".json",)):
        if orphan.stem not in videos:
            issues.warning(orphan, "annotation without a clip in video/; ignored")
    return videos


def _merge(target: dict, source: dict, kind: str, root: Path, issues: IssueLog) -> None:
    for key, value in source.items():
        if key in target:
            issues.error(DataError(root, f"{kind} {key} also in an earlier root; this copy ignored"))
            continue
        target[key] = value


def load_dataset(roots: Path | str | Iterable[Path | str], issues: IssueLog | None = None) -> Dataset:
    """Scan one or more roots into one ``Dataset``; problems go to ``issues``.

    An id present in two roots keeps its first occurrence (roots are read in
    the order given) and the duplicate is reported.
    """
    issues = issues if issues is not None else IssueLog()
    root_list = [roots] if isinstance(roots, (str, Path)) else list(roots)
    if not root_list:
        raise ValueError("no dataset root given")
    resolved = tuple(check_root(r) for r in root_list)
    items: dict[str, Item] = {}
    videos: dict[str, Video] = {}
    for root in resolved:
        _merge(items, scan_items(root, issues), "item", root, issues)
        _merge(videos, scan_videos(root, issues), "video", root, issues)
    return Dataset(roots=resolved, items=items, videos=videos)
