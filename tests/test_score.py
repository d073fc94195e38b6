"""The contest scorer: result.json validation, the three-level metric, the oracle and the CLI."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dataset.annotations import image_annotation_dict, video_annotation_dict
from dataset.boxes import iou
from dataset.errors import DataError, IssueLog
from dataset.identity import contest_instance_id
from dataset.images import write_image
from dataset.layout import load_dataset
from dataset.records import AnnotatedFrame, Dataset, Instance, ShopImage, Video
from dataset.score import (ClipPrediction, ResultError, load_result, oracle_result, score, validate_result,
                           write_result)
from dataset.score.__main__ import main
from dataset.video_write import write_mp4

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "taobao_live_sample"

ITEM1, ITEM2, ITEM3 = "000001", "000002", "000003"
SHOP_W, SHOP_H = 40, 50
ID1, ID2, ID3 = (contest_instance_id(i) for i in (ITEM1, ITEM2, ITEM3))
BOX1_SHOP = (10, 10, 30, 40)
BOX1_FRAME = (8, 8, 40, 56)


@pytest.fixture(scope="session")
def tiny_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real 8-frame clip, copied for every clip id (the scan only needs the file)."""
    frames = [np.full((32, 32, 3), 16 * k, np.uint8) for k in range(8)]
    return write_mp4(tmp_path_factory.mktemp("mp4") / "clip.mp4", frames)


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False))


def _add_image(root: Path, item_id: str, n: int, instances: tuple[Instance, ...] | None) -> None:
    """A shop image; ``instances`` None leaves it without an annotation file."""
    image_path = write_image(root / "image" / item_id / f"{n}.jpg", np.zeros((SHOP_H, SHOP_W, 3), np.uint8))
    if instances is not None:
        record = ShopImage(item_id, f"{n}.jpg", image_path, instances=instances, width=SHOP_W, height=SHOP_H)
        _write_json(root / "image_annotation" / item_id / f"{n}.json", image_annotation_dict(record))


def _add_clip(root: Path, mp4: Path, video_id: str, boxes: dict[int, list[Instance]] | None) -> None:
    """A clip with annotated frames 0, 40, ..., 360; ``boxes`` None leaves it without annotation."""
    path = root / "video" / f"{video_id}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mp4, path)
    if boxes is not None:
        frames = tuple(AnnotatedFrame(i, tuple(boxes.get(i, ()))) for i in range(0, 400, 40))
        video = Video(video_id, path, frames=frames, width=64, height=64)
        _write_json(root / "video_annotation" / f"{video_id}.json", video_annotation_dict(video))


def _inst(box: tuple[int, int, int, int], instance_id: int) -> Instance:
    return Instance(box, instance_id, "长袖上衣")


@pytest.fixture
def world(tmp_path: Path, tiny_mp4: Path) -> Path:
    """Three items and five clips covering every case the metric distinguishes.

    000001 shows item 000001 in frames 80 (small) and 120 (large); frame 40
    shows only an unrelated garment. 000002 shows item 000002 in frame 200.
    000003 has boxes, all instance_id 0 (no ground truth). 000004 sells item
    000003 (clip and item ids differ). 000005 has no annotation file.
    """
    root = tmp_path / "part1"
    _add_image(root, ITEM1, 0, (_inst(BOX1_SHOP, ID1), _inst((0, 0, 5, 5), 0)))
    _add_image(root, ITEM1, 1, None)
    _add_image(root, ITEM2, 0, (_inst((5, 5, 35, 45), ID2),))
    _add_image(root, ITEM2, 1, ())
    _add_image(root, ITEM3, 0, (_inst((0, 0, 9, 9), ID3),))
    _add_clip(root, tiny_mp4, "000001", {40: [_inst((0, 0, 20, 20), 0)],
                                         80: [_inst((10, 10, 20, 20), ID1)],
                                         120: [_inst(BOX1_FRAME, ID1), _inst((0, 0, 5, 5), 0)]})
    _add_clip(root, tiny_mp4, "000002", {200: [_inst((4, 4, 30, 30), ID2)]})
    _add_clip(root, tiny_mp4, "000003", {0: [_inst((4, 4, 30, 30), 0)]})
    _add_clip(root, tiny_mp4, "000004", {160: [_inst((2, 2, 60, 60), ID3)]})
    _add_clip(root, tiny_mp4, "000005", None)
    return root


@pytest.fixture
def data(world: Path) -> Dataset:
    return load_dataset(world)


def _pred(video_id: str, item_id: str, frame_index: int, img_name: str = "0",
          item_box: tuple[float, ...] = BOX1_SHOP, frame_box: tuple[float, ...] = BOX1_FRAME) -> dict:
    return {video_id: {"item_id": item_id, "frame_index": frame_index,
                       "result": [{"img_name": img_name, "item_box": list(item_box), "frame_box": list(frame_box)}]}}


def _score(result: dict, data: Dataset, frame_tolerance: int = 0):
    return score(validate_result(result, "result.json"), data, frame_tolerance)


def _levels(report) -> dict[str, tuple[int, int, int]]:
    return {name: (s.tp, s.fp, s.fn) for name, s in report.levels.items()}


def _clip(report, video_id: str):
    return next(c for c in report.clips if c.video_id == video_id)


# ------------------------------------------------------------------------------------------- the metric

def test_oracle_scores_one_at_every_level(data: Dataset) -> None:
    result = oracle_result(data)
    assert sorted(result) == ["000001", "000002", "000004"]
    assert result["000001"]["frame_index"] == 120            # the largest box of the item, frame >= 80
    assert result["000001"]["result"][0] == {"img_name": "0", "item_box": list(BOX1_SHOP),
                                             "frame_box": list(BOX1_FRAME)}
    assert result["000004"]["item_id"] == ITEM3
    report = _score(result, data)
    assert report.final == pytest.approx(1.0)
    assert all(s.f1 == 1.0 for s in report.levels.values())
    assert report.n_gt == report.n_pred == 3
    assert report.frame_box_iou_mean == pytest.approx(1.0)


def test_empty_result_scores_zero_with_every_clip_missed(data: Dataset) -> None:
    report = _score({}, data)
    assert report.final == 0.0
    assert _levels(report) == {name: (0, 0, 3) for name in ("item", "frame", "box")}
    assert {c.code for c in report.clips} == {"no_prediction"}


def test_wrong_item_loses_all_three_levels(data: Dataset) -> None:
    result = {**oracle_result(data), **_pred("000001", ITEM2, 120)}
    report = _score(result, data)
    assert _levels(report) == {name: (2, 1, 1) for name in ("item", "frame", "box")}
    assert _clip(report, "000001").code == "wrong_item"


@pytest.mark.parametrize("frame_index,code", [(100, "frame_not_annotated"), (40, "frame_without_item"),
                                              (0, "frame_without_item")])
def test_right_item_wrong_frame_loses_frame_and_box(data: Dataset, frame_index: int, code: str) -> None:
    result = {**oracle_result(data), **_pred("000001", ITEM1, frame_index)}
    report = _score(result, data)
    assert _levels(report) == {"item": (3, 0, 0), "frame": (2, 1, 1), "box": (2, 1, 1)}
    outcome = _clip(report, "000001")
    assert outcome.passed == (True, False, False) and outcome.code == code
    assert report.final == pytest.approx(0.2 + 0.8 * 2 / 3)


def test_shifted_item_box_loses_box_level_only(data: Dataset) -> None:
    shifted = (20, 25, 40, 50)
    assert iou(shifted, BOX1_SHOP, plus_one=True) < 0.5
    report = _score({**oracle_result(data), **_pred("000001", ITEM1, 120, item_box=shifted)}, data)
    assert _levels(report) == {"item": (3, 0, 0), "frame": (3, 0, 0), "box": (2, 1, 1)}
    assert _clip(report, "000001").code == "item_box_miss"


def test_frame_box_is_not_scored_but_reported(data: Dataset) -> None:
    report = _score({**oracle_result(data), **_pred("000001", ITEM1, 120, frame_box=(0, 0, 2, 2))}, data)
    assert report.final == pytest.approx(1.0)
    assert _clip(report, "000001").frame_box_iou < 0.1
    assert report.frame_box_iou_mean < 1.0


def test_prediction_on_clip_without_ground_truth_is_a_false_positive(data: Dataset) -> None:
    report = _score({**oracle_result(data), **_pred("000003", ITEM1, 120)}, data)
    assert _levels(report) == {name: (3, 1, 0) for name in ("item", "frame", "box")}
    assert report.n_pred == 4 and report.n_gt == 3
    assert _clip(report, "000003").code == "no_ground_truth"


@pytest.mark.parametrize("video_id,code,listed", [("999999", "unknown_clip", "unknown_clips"),
                                                  ("000005", "unannotated_clip", "unannotated_clips")])
def test_unconfirmable_clip_is_a_false_positive_and_reported(data: Dataset, video_id: str, code: str,
                                                             listed: str) -> None:
    report = _score({**oracle_result(data), **_pred(video_id, ITEM1, 120)}, data)
    assert _levels(report) == {name: (3, 1, 0) for name in ("item", "frame", "box")}
    assert getattr(report, listed) == [video_id]
    assert _clip(report, video_id).code == code
    assert report.to_dict()["diagnostics"][listed] == [video_id]
    assert video_id in report.format_table()


@pytest.mark.parametrize("item_id,video_id,frame_index", [(ITEM1, "000001", 120), (ITEM2, "000002", 200)])
def test_image_without_boxes_counts_as_one_whole_image_box(data: Dataset, item_id: str, video_id: str,
                                                           frame_index: int) -> None:
    """Item 000001 image 1 has no annotation file; item 000002 image 1 has an empty list."""
    whole = _pred(video_id, item_id, frame_index, img_name="1", item_box=(0, 0, SHOP_W, SHOP_H))
    assert _score({**oracle_result(data), **whole}, data).final == pytest.approx(1.0)
    small = _pred(video_id, item_id, frame_index, img_name="1", item_box=(0, 0, 10, 10))
    assert _levels(_score({**oracle_result(data), **small}, data))["box"] == (2, 1, 1)


def test_img_name_not_of_the_item_fails_box_level(data: Dataset) -> None:
    report = _score({**oracle_result(data), **_pred("000001", ITEM1, 120, img_name="7")}, data)
    assert _levels(report)["box"] == (2, 1, 1)
    assert "'7' is not an image of item 000001" in _clip(report, "000001").reason


def test_box_level_uses_boxes_of_the_item_only(data: Dataset) -> None:
    """Image 0 of item 000001 also holds an instance_id 0 garment at (0, 0, 5, 5)."""
    report = _score({**oracle_result(data), **_pred("000001", ITEM1, 120, item_box=(0, 0, 5, 5))}, data)
    assert _levels(report)["box"] == (2, 1, 1)


def test_frame_tolerance_accepts_the_nearest_annotated_frame(data: Dataset) -> None:
    near = {**oracle_result(data), **_pred("000001", ITEM1, 90)}
    assert _clip(_score(near, data), "000001").code == "frame_not_annotated"
    lenient = _score(near, data, frame_tolerance=20)
    assert lenient.final == pytest.approx(1.0)
    assert _clip(lenient, "000001").matched_frame == 80
    assert _clip(_score(near, data, frame_tolerance=5), "000001").code == "frame_not_annotated"
    # 55 is nearest to frame 40, which does not show the item: nearest wins even though 80 is within 30.
    nearest_wrong = _score({**oracle_result(data), **_pred("000001", ITEM1, 55)}, data, frame_tolerance=30)
    assert _clip(nearest_wrong, "000001").code == "frame_without_item"
    # 60 is as near to 40 as to 80; one of the tied frames shows the item.
    tie = _score({**oracle_result(data), **_pred("000001", ITEM1, 60)}, data, frame_tolerance=20)
    assert _clip(tie, "000001").passed[1]


@pytest.mark.parametrize("item_box,plain,passes", [
    ((0, 0, 9, 4.5), 0.5, True),   # plain IoU exactly 0.5 would fail; +1 areas give 0.55
    ((0, 0, 9, 4), 36 / 81, False),  # +1 areas give exactly 0.5, and the test is IoU > 0.5
])
def test_box_level_uses_plus_one_areas_and_a_strict_threshold(data: Dataset, item_box: tuple, plain: float,
                                                              passes: bool) -> None:
    gt = (0, 0, 9, 9)   # item 000003, image 0
    assert iou(item_box, gt) == pytest.approx(plain)
    report = _score({**oracle_result(data), **_pred("000004", ITEM3, 160, item_box=item_box)}, data)
    assert _clip(report, "000004").passed[2] is passes


def test_clip_whose_item_is_not_in_the_catalogue_is_reported(world: Path, tiny_mp4: Path) -> None:
    _add_clip(world, tiny_mp4, "000009", {80: [_inst((1, 1, 20, 20), contest_instance_id("000009"))]})
    data = load_dataset(world)
    report = _score(oracle_result(data), data)
    assert report.unreachable_clips == ["000009"]
    assert report.n_gt == 4 and _levels(report)["item"] == (3, 0, 1)


def test_dataset_without_annotations_cannot_be_scored(tmp_path: Path, tiny_mp4: Path) -> None:
    root = tmp_path / "test_part"
    _add_image(root, ITEM1, 0, None)
    _add_clip(root, tiny_mp4, "000001", None)
    with pytest.raises(DataError, match="nothing to score against"):
        score({}, load_dataset(root))


def test_report_round_trips_through_json(data: Dataset) -> None:
    report = _score({**oracle_result(data), **_pred("000001", ITEM2, 120)}, data)
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["final"] == pytest.approx(report.final)
    assert as_json["levels"]["item"]["fp"] == 1
    clip = next(c for c in as_json["clips"] if c["video_id"] == "000001")
    assert clip["passed"] == {"item": False, "frame": False, "box": False}
    assert clip["truth_items"] == [ITEM1] and clip["predicted_item"] == ITEM2


# ------------------------------------------------------------------------------------- the result file

GOOD_ENTRY = {"img_name": "0", "item_box": [1, 2, 30, 40], "frame_box": [3, 4, 50, 60]}


def _clip_value(**changes: object) -> dict:
    value = {"item_id": ITEM1, "frame_index": 80, "result": [dict(GOOD_ENTRY)]}
    value.update(changes)
    return {"000001": value}


def _entry_value(**changes: object) -> dict:
    entry = {**GOOD_ENTRY, **changes}
    return _clip_value(result=[{k: v for k, v in entry.items() if v is not None}])


MALFORMED = [
    ("{not json", None, "not valid JSON"),
    ("", None, "not valid JSON"),
    ("[1, 2]", "$", "top level is list"),
    ('"text"', "$", "top level is str"),
    (json.dumps({"000001": []}), '$["000001"]', "expected an object"),
    (json.dumps({"000001": {"frame_index": 80, "result": [GOOD_ENTRY]}}), '$["000001"].item_id', "missing"),
    (json.dumps({"000001": {"item_id": ITEM1, "result": [GOOD_ENTRY]}}), '$["000001"].frame_index', "missing"),
    (json.dumps({"000001": {"item_id": ITEM1, "frame_index": 80}}), '$["000001"].result', "missing"),
    (json.dumps(_clip_value(item_id=1)), '$["000001"].item_id', "item id string"),
    (json.dumps(_clip_value(frame_index="80")), '$["000001"].frame_index', "integer"),
    (json.dumps(_clip_value(frame_index=80.0)), '$["000001"].frame_index', "integer"),
    (json.dumps(_clip_value(frame_index=True)), '$["000001"].frame_index', "integer"),
    (json.dumps(_clip_value(frame_index=-40)), '$["000001"].frame_index', "non-negative"),
    (json.dumps(_clip_value(result=[])), '$["000001"].result', "empty list"),
    (json.dumps(_clip_value(result={})), '$["000001"].result', "expected a list"),
    (json.dumps(_clip_value(result=["0"])), '$["000001"].result[0]', "expected an object"),
    (json.dumps(_entry_value(item_box=[1, 2, 3])), '$["000001"].result[0].item_box', "4 numbers"),
    (json.dumps(_entry_value(item_box="1,2,3,4")), '$["000001"].result[0].item_box', "expected a list"),
    (json.dumps(_entry_value(item_box=[1, 2, "3", 4])), '$["000001"].result[0].item_box[2]', "number"),
    (json.dumps(_entry_value(frame_box=[30, 2, 10, 40])), '$["000001"].result[0].frame_box', "x2 < x1"),
    (json.dumps(_entry_value(frame_box=None)), '$["000001"].result[0].frame_box', "missing"),
    (json.dumps(_entry_value(img_name=0)), '$["000001"].result[0].img_name', "image name string"),
    (json.dumps(_entry_value(img_name="")), '$["000001"].result[0].img_name', "image name string"),
]


@pytest.mark.parametrize("content,field,problem", MALFORMED)
def test_malformed_result_names_file_and_json_path(tmp_path: Path, content: str, field: str | None,
                                                   problem: str) -> None:
    path = tmp_path / "result.json"
    path.write_text(content)
    with pytest.raises(ResultError) as caught:
        load_result(path)
    assert isinstance(caught.value, DataError)
    assert caught.value.field == field
    assert str(path) in str(caught.value) and (field is None or field in str(caught.value))
    assert problem in str(caught.value)


def test_missing_result_file_is_a_result_error(tmp_path: Path) -> None:
    with pytest.raises(ResultError, match="file not found"):
        load_result(tmp_path / "absent.json")


def test_cli_exits_2_with_one_line_naming_file_and_path(tmp_path: Path, world: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(_entry_value(item_box=[1, 2, 3])))
    assert main(["--pred", str(path), "--data", str(world)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(path) in err and '$["000001"].result[0].item_box' in err


def test_cli_exits_2_on_a_bad_data_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "result.json"
    path.write_text("{}")
    assert main(["--pred", str(path), "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err and "not found" in err


def test_img_name_with_extension_is_normalised_with_a_warning(data: Dataset) -> None:
    issues = IssueLog()
    predictions = validate_result(_pred("000001", ITEM1, 120, img_name="0.jpg"), "result.json", issues)
    assert predictions["000001"].entries[0].img_name == "0"
    assert len(issues.warnings) == 1 and "'0.jpg'" in issues.warnings[0].problem
    assert score(predictions, data).levels["box"].tp == 1
    validate_result(_pred("000001", ITEM1, 120, img_name="0"), "result.json", issues)
    assert len(issues.warnings) == 1


def test_load_result_types_the_file(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(_clip_value()))
    loaded = load_result(path)
    assert loaded == {"000001": ClipPrediction("000001", ITEM1, 80, loaded["000001"].entries)}
    entry = loaded["000001"].entries[0]
    assert (entry.img_name, entry.item_box, entry.frame_box) == ("0", (1, 2, 30, 40), (3, 4, 50, 60))


def test_write_result_writes_plain_types_and_loads_back(tmp_path: Path) -> None:
    result = {"000002": {"item_id": np.str_(ITEM2), "frame_index": np.int64(40),
                         "result": [{"img_name": "3", "item_box": np.array([1.7, 2.2, 30.9, 40.0]),
                                     "frame_box": (np.int32(3), 4, 50, 60)}]}}
    path = write_result(tmp_path / "out" / "result.json", result)
    raw = json.loads(path.read_text())
    assert raw == {"000002": {"item_id": ITEM2, "frame_index": 40,
                              "result": [{"img_name": "3", "item_box": [1, 2, 30, 40], "frame_box": [3, 4, 50, 60]}]}}
    assert load_result(path)["000002"].frame_index == 40
    typed = load_result(path)
    again = write_result(tmp_path / "again.json", typed)
    assert json.loads(again.read_text()) == raw


def test_write_result_refuses_an_invalid_result_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text("{}")
    with pytest.raises(ResultError) as caught:
        write_result(path, _clip_value(frame_index="80"))
    assert caught.value.field == '$["000001"].frame_index'
    assert path.read_text() == "{}"


def test_cli_prints_the_table_and_writes_the_json_report(tmp_path: Path, world: Path, data: Dataset,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    pred = write_result(tmp_path / "result.json", {**oracle_result(data), **_pred("999999", ITEM1, 120)})
    report_path = tmp_path / "report.json"
    assert main(["--pred", str(pred), "--data", str(world), "--json", str(report_path)]) == 0
    out = capsys.readouterr().out
    assert "final" in out and "unknown clip ids (FP): 1: 999999" in out
    report = json.loads(report_path.read_text())
    assert report["levels"]["item"] == {"precision": 0.75, "recall": 1.0, "f1": pytest.approx(6 / 7),
                                        "tp": 3, "fp": 1, "fn": 0}


# ------------------------------------------------------------------------------------------ real data

@pytest.fixture
def sample() -> Path:
    if not SAMPLE.is_dir():
        pytest.skip(f"{SAMPLE} is not present")
    return SAMPLE


@pytest.mark.shared_data
def test_oracle_scores_one_on_the_real_sample(sample: Path) -> None:
    data = load_dataset(sample)
    result = oracle_result(data)
    assert len(result) == 10
    assert all(r["frame_index"] >= 80 and r["frame_index"] % 40 == 0 for r in result.values())
    report = score(validate_result(result, "oracle"), data)
    assert report.final == pytest.approx(1.0)
    assert report.n_gt == 10


@pytest.mark.shared_data
def test_cli_runs_on_the_real_sample(sample: Path, tmp_path: Path) -> None:
    data = load_dataset(sample)
    result = oracle_result(data)
    wrong = sorted(result)[:2]
    result[wrong[0]]["item_id"], result[wrong[1]]["item_id"] = result[wrong[1]]["item_id"], result[wrong[0]]["item_id"]
    pred = write_result(tmp_path / "result.json", result)
    done = subprocess.run([sys.executable, "-m", "dataset.score", "--pred", str(pred), "--data", str(sample),
                           "--json", str(tmp_path / "report.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "final  0.8000" in done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["levels"]["frame"]["tp"] == 8 and report["diagnostics"]["failures"] == {"wrong_item": 2}
