from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from dataset.annotations import (image_annotation_dict, parse_image_annotation, parse_video_annotation,
                                 video_annotation_dict)
from dataset.errors import AnnotationError, DataError, IssueLog
from dataset.images import write_image
from dataset.layout import load_dataset
from dataset.records import AnnotatedFrame, Instance, ShopImage, Video


def _write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False))
    return path


def _tiny_root(root: Path, items: dict[str, int], videos: list[str]) -> Path:
    """Images as real tiny JPEGs and clips as placeholder files (the scan never decodes them)."""
    for item, count in items.items():
        for n in range(count):
            write_image(root / "image" / item / f"{n}.jpg", np.zeros((8, 8, 3), np.uint8))
    for video in videos:
        (root / "video").mkdir(parents=True, exist_ok=True)
        (root / "video" / f"{video}.mp4").write_bytes(b"")
    return root


def test_real_quirks_accepted(tmp_path: Path) -> None:
    path = _write(tmp_path / "image_annotation" / "000001" / "0.json", {
        "item_id": "000001", "img_name": "0.jpg", "width": 800, "height": 800,
        "annotations": [
            {"label": "长款外套", "viewpoint": 1.0, "display": 0.0, "instance_id": 20000101.0,
             "box": [235.0, 60.0, 782.0, 1348.0]},                      # outside the image: clipped
            {"label": None, "viewpoint": math.nan, "display": math.nan, "instance_id": math.nan,
             "box": []},                                                  # empty row: dropped
            {"label": "长裤", "viewpoint": 0, "display": 1, "instance_id": 0, "box": [10, 10, 10, 50]},  # degenerate
            {"label": "中等半身裙（及膝）", "viewpoint": math.nan, "display": 1, "instance_id": 0,
             "box": [-5, 3, 100, 90]},
        ]})
    issues = IssueLog()
    image = parse_image_annotation(path, issues=issues)
    assert image.path == tmp_path / "image" / "000001" / "0.jpg"
    assert image.stem == "0"
    coat, skirt = image.instances
    assert coat == Instance((235, 60, 782, 800), 20000101, "长外套", 13, 1, 0)
    assert skirt.box == (0, 3, 100, 90) and skirt.viewpoint is None and skirt.label == "中等半身裙"
    problems = " ".join(i.problem for i in issues.warnings)
    assert "empty box" in problems and "degenerate" in problems and "clipped" in problems


@pytest.mark.parametrize("content,field", [
    ("{not json", None),
    ("", None),
    ("[1, 2]", None),
    (json.dumps({"annotations": {"box": [1, 2, 3, 4]}}), "annotations"),
    (json.dumps({"annotations": [{"label": "长裤", "instance_id": 0}]}), "annotations[0].box"),
    (json.dumps({"annotations": [{"box": [1, 2, 3], "instance_id": 0}]}), "annotations[0].box"),
    (json.dumps({"annotations": [{"box": [1, "a", 3, 4], "instance_id": 0}]}), "annotations[0].box"),
    (json.dumps({"annotations": [{"box": [1, 2, 30, 40]}]}), "annotations[0].instance_id"),
    (json.dumps({"annotations": [{"box": [1, 2, 30, 40], "instance_id": "x"}]}), "annotations[0].instance_id"),
])
def test_malformed_image_annotation_names_file_and_field(tmp_path: Path, content: str, field: str | None) -> None:
    path = tmp_path / "image_annotation" / "000002" / "3.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(AnnotationError) as caught:
        parse_image_annotation(path)
    assert str(path) in str(caught.value)
    assert caught.value.field == field


def test_video_annotation_frames_sorted_and_merged(tmp_path: Path) -> None:
    path = _write(tmp_path / "video_annotation" / "000007.json", {
        "video_id": "000007", "frames": [
            {"frame_index": 40.0, "annotations": []},
            {"frame_index": 0, "annotations": [{"label": "短袖Top", "viewpoint": 0, "display": 1,
                                                "instance_id": 20000701, "box": [1, 2, 30, 40]}]},
            {"frame_index": 0, "annotations": [{"label": "长裤", "viewpoint": 0, "display": 1,
                                                "instance_id": 0, "box": [5, 5, 20, 20]}]},
        ]})
    issues = IssueLog()
    video = parse_video_annotation(path, issues=issues)
    assert video.path == tmp_path / "video" / "000007.mp4"
    assert [f.frame_index for f in video.frames] == [0, 40]
    assert [i.instance_id for i in video.frame(0).instances] == [20000701, 0]
    assert video.frame(80) is None
    assert "repeated" in issues.warnings[0].problem


def test_video_annotation_missing_frames_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "video_annotation" / "000007.json", {"video_id": "000007"})
    with pytest.raises(AnnotationError, match=r"000007.json \[frames\]"):
        parse_video_annotation(path)


def test_serialisers_round_trip(tmp_path: Path) -> None:
    inst = Instance((1, 2, 30, 40), 20000101, "长外套", 13, 0, 1)
    image = ShopImage("000001", "2.jpg", tmp_path / "image/000001/2.jpg", None, (inst,), 64, 48)
    video = Video("000001", tmp_path / "video/000001.mp4", None,
                  (AnnotatedFrame(0, (inst,)), AnnotatedFrame(40, ())), 540, 960)
    img_path = _write(tmp_path / "image_annotation/000001/2.json", image_annotation_dict(image))
    vid_path = _write(tmp_path / "video_annotation/000001.json", video_annotation_dict(video))
    parsed_image = parse_image_annotation(img_path)
    assert parsed_image.instances == (inst,) and (parsed_image.width, parsed_image.height) == (64, 48)
    assert parse_video_annotation(vid_path).frames == video.frames


def test_reference_annotations_parse(tmp_path: Path, reference_annotations: Path) -> None:
    """The real demo-set rows (float ids, NaN viewpoints, synonyms, empty boxes) parse without errors."""
    per_image: dict[tuple[str, str], list[dict]] = defaultdict(list)
    with open(reference_annotations / "img.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            per_image[(row["item_id"], row["img_name"])].append(row)

    def number(text: str) -> float:
        return float(text) if text else math.nan

    for (item, img_name), rows in per_image.items():
        annotations = [{"label": r["label"] or math.nan, "viewpoint": number(r["viewpoint"]),
                        "display": number(r["display"]), "instance_id": number(r["instance_id"]),
                        "box": [number(r[k]) for k in ("x_min", "y_min", "x_max", "y_max")] if r["x_min"] else []}
                       for r in rows]
        _write(tmp_path / "image_annotation" / item / f"{Path(img_name).stem}.json",
               {"item_id": item, "img_name": img_name, "annotations": annotations})
    issues = IssueLog()
    parsed = [parse_image_annotation(p, issues=issues)
              for p in sorted((tmp_path / "image_annotation").rglob("*.json"))]
    instances = [i for image in parsed for i in image.instances]
    assert not issues.errors
    assert len(instances) == 80  # 113 rows, 33 of them empty
    assert all(i.category >= 0 for i in instances)
    assert {i.instance_id for i in instances} >= {20000101, 20001302}


def test_load_dataset_combines_roots_and_collects_errors(tmp_path: Path) -> None:
    part1 = _tiny_root(tmp_path / "part1", {"000001": 2, "000002": 3}, ["000001", "000002"])
    part2 = _tiny_root(tmp_path / "part2", {"000003": 1, "000001": 1}, ["000003"])
    _write(part1 / "image_annotation/000001/0.json", {"item_id": "000001", "img_name": "0.jpg", "annotations": [
        {"label": "长裤", "viewpoint": 0, "display": 0, "instance_id": 20000101, "box": [0, 0, 5, 5]}]})
    (part1 / "image_annotation/000002").mkdir(parents=True)
    (part1 / "image_annotation/000002/1.json").write_text("{broken")
    _write(part1 / "video_annotation/000001.json", {"video_id": "000001", "frames": []})
    _write(part1 / "video_annotation/000009.json", {"video_id": "000009", "frames": []})
    (part1 / "image" / "000002" / "10.jpg").write_bytes((part1 / "image/000002/2.jpg").read_bytes())

    issues = IssueLog()
    data = load_dataset([part1, part2], issues)
    assert sorted(data.items) == ["000001", "000002", "000003"]
    assert [im.img_name for im in data.items["000002"].images] == ["0.jpg", "1.jpg", "2.jpg", "10.jpg"]
    assert data.items["000001"].images[0].instances[0].instance_id == 20000101
    assert data.items["000001"].images[1].instances is None
    assert data.items["000002"].images[1].instances is None  # broken file: kept, unannotated, reported
    assert data.videos["000001"].frames == () and data.videos["000002"].frames is None
    assert data.annotated
    errors = [str(e) for e in issues.errors]
    assert any("1.json" in e and "not valid JSON" in e for e in errors)
    assert any("000001 also in an earlier root" in e for e in errors)
    assert any("000009.json" in str(w) for w in issues.warnings)


def test_load_dataset_rejects_non_roots(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither an image/ nor a video/"):
        load_dataset(tmp_path / "empty")


def test_real_sample_layout(taobao_sample: Path) -> None:
    issues = IssueLog()
    data = load_dataset(taobao_sample, issues)
    assert len(data.items) == 10 and len(data.videos) == 10
    assert not issues.errors
    for video_id, video in data.videos.items():
        assert [f.frame_index for f in video.frames] == list(range(0, 400, 40))
        ids = {i.instance_id for f in video.frames for i in f.instances if i.instance_id}
        assert ids and all(i // 100 == int(video_id) for i in ids)
