"""The synthetic benchmark generator: contest layout, schema round trip, ground truth, determinism, CLI."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from dataset.annotations import parse_image_annotation, parse_video_annotation
from dataset.frames import probe, read_frames
from dataset.identity import contest_instance_id, item_of_instance
from dataset.labels import CATEGORIES
from dataset.layout import load_dataset
from dataset.synth import SynthConfig, generate
from dataset.synth.__main__ import main
from dataset.synth.compose import BODY, Canvas
from dataset.synth.garments import FRONT
from dataset.synth.plan import make_plan
from dataset.synth.shop import TARGET, flat_sprite, render_shop_image

TINY = SynthConfig(items=5, seed=1, clip_frames=48, clip_width=270, clip_height=480, shop_size=256,
                   uncatalogued_share=0.2, absent_start_share=0.5)
MICRO = replace(TINY, items=2, clip_frames=41, clip_width=128, clip_height=224, shop_size=128,
                shop_images_min=2, shop_images_max=2, uncatalogued_share=0.5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "tiny"
    summary = generate(root, TINY)
    return root, summary


def _json_files(root: Path) -> dict[str, bytes]:
    files = sorted((root / "image_annotation").rglob("*.json")) + sorted((root / "video_annotation").glob("*.json"))
    return {str(p.relative_to(root)): p.read_bytes() for p in files + [root / "synth_manifest.json"]}


def test_tiny_set_has_the_contest_layout(tiny: tuple[Path, dict]) -> None:
    root, summary = tiny
    ids = TINY.item_ids
    assert sorted(p.name for p in (root / "image").iterdir()) == ids
    assert sorted(p.name for p in (root / "image_annotation").iterdir()) == ids
    for item_id in ids:
        images = sorted(p.stem for p in (root / "image" / item_id).glob("*.jpg"))
        notes = sorted(p.stem for p in (root / "image_annotation" / item_id).glob("*.json"))
        assert images == notes and TINY.shop_images_min <= len(images) <= TINY.shop_images_max
    videos = sorted(p.stem for p in (root / "video").glob("*.mp4"))
    assert videos == sorted(p.stem for p in (root / "video_annotation").glob("*.json"))
    extra = [v for v in videos if v not in ids]
    assert set(ids) <= set(videos) and len(extra) == TINY.uncatalogued_clips == summary["uncatalogued_clips"]
    assert all(len(v) == 6 and v.isdigit() and int(v) >= 100_000 for v in extra)
    assert (root / "synth_manifest.json").is_file() and (root / "contact_sheet.png").is_file()
    data = load_dataset(root)
    assert sorted(data.items) == ids and sorted(data.videos) == videos


def test_annotations_round_trip_and_follow_the_schema(tiny: tuple[Path, dict]) -> None:
    root, _ = tiny
    for path in sorted((root / "image_annotation").rglob("*.json")):
        raw = json.loads(path.read_text())
        assert set(raw) == {"item_id", "img_name", "width", "height", "annotations"}
        assert raw["img_name"] == f"{path.stem}.jpg" and raw["item_id"] == path.parent.name
        parsed = parse_image_annotation(path)
        assert len(parsed.instances) == len(raw["annotations"]) >= 1
        item_instance = contest_instance_id(raw["item_id"], 1)
        assert any(i.instance_id == item_instance for i in parsed.instances)
        for entry, inst in zip(raw["annotations"], parsed.instances):
            assert set(entry) == {"label", "viewpoint", "display", "instance_id", "box"}
            assert entry["label"] in CATEGORIES and inst.category == CATEGORIES.index(entry["label"])
            assert list(inst.box) == entry["box"], "the parser must not need to clip or fix a box"
            x1, y1, x2, y2 = entry["box"]
            assert 0 <= x1 < x2 <= raw["width"] and 0 <= y1 < y2 <= raw["height"]
            assert entry["viewpoint"] in (0, 1) and entry["display"] in (0, 1)
            assert entry["instance_id"] in (0, item_instance)


def test_clips_decode_and_their_truth_is_consistent(tiny: tuple[Path, dict]) -> None:
    root, _ = tiny
    manifest = json.loads((root / "synth_manifest.json").read_text())
    truth = {c["video_id"]: c for c in manifest["clips"]}
    for path in sorted((root / "video_annotation").glob("*.json")):
        raw = json.loads(path.read_text())
        assert set(raw) == {"video_id", "width", "height", "frames"}
        video = parse_video_annotation(path)
        assert [f.frame_index for f in video.frames] == list(range(0, TINY.clip_frames, 40))
        ids = {i.instance_id for f in video.frames for i in f.instances}
        clip = truth[video.video_id]
        if clip["in_catalogue"]:
            assert item_of_instance(contest_instance_id(video.video_id, 1)) == video.video_id
            assert contest_instance_id(video.video_id, 1) in ids
            assert ids <= {0, contest_instance_id(video.video_id, 1)}
        else:
            assert ids <= {0} and clip["item_id"] is None
        if clip["absent_until"]:
            assert all(i.instance_id == 0 for f in video.frames if f.frame_index < clip["absent_until"] for i in f.instances)
        for segment in clip["segments"]:
            for frame in video.frames:
                if segment["start"] <= frame.frame_index < segment["end"] and segment["mode"] != "absent":
                    shown = [i for i in frame.instances if clip["in_catalogue"] and i.instance_id]
                    assert all(i.display == int(segment["mode"] == "worn") for i in shown)
        for frame, raw_frame in zip(video.frames, raw["frames"]):
            assert [list(i.box) for i in frame.instances] == [a["box"] for a in raw_frame["annotations"]]
            for inst in frame.instances:
                x1, y1, x2, y2 = inst.box
                assert 0 <= x1 < x2 <= TINY.clip_width and 0 <= y1 < y2 <= TINY.clip_height
        info = probe(video.path, backend="opencv")
        assert (info.num_frames, info.width, info.height) == (TINY.clip_frames, TINY.clip_width, TINY.clip_height)
        last = read_frames(video.path, [TINY.clip_frames - 1], backend="opencv")
        assert last.frames[0].shape == (TINY.clip_height, TINY.clip_width, 3) and not last.missing


def test_manifest_records_the_config_and_groups(tiny: tuple[Path, dict]) -> None:
    root, _ = tiny
    manifest = json.loads((root / "synth_manifest.json").read_text())
    assert manifest["config"] == TINY.to_dict() and manifest["seed"] == TINY.seed and manifest["version"]
    assert [i["item_id"] for i in manifest["items"]] == TINY.item_ids
    assert sum(1 for c in manifest["clips"] if c["in_catalogue"]) == TINY.items


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", MICRO, workers=1, contact_sheet=False)
    generate(tmp_path / "b", MICRO, workers=2, contact_sheet=False)
    generate(tmp_path / "c", replace(MICRO, seed=2), workers=1, contact_sheet=False)
    assert first["clips"] == 3
    a, b, c = (_json_files(tmp_path / k) for k in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c
    jpeg = "image/000001/1.jpg"
    assert (tmp_path / "a" / jpeg).read_bytes() == (tmp_path / "b" / jpeg).read_bytes()
    frames = {k: read_frames(tmp_path / k / "video" / "000002.mp4", [20], backend="opencv").frames[0] for k in "abc"}
    assert np.array_equal(frames["a"], frames["b"])
    assert not np.array_equal(frames["a"], frames["c"])


def test_colour_variants_follow_the_share_knob() -> None:
    config = replace(TINY, items=12, colour_variant_share=1.0)
    plan = make_plan(config)
    assert sum(len(g) for g in plan.groups) == 12 and all(len(g) >= 2 for g in plan.groups)
    designs = {i.item_id: i.design for i in plan.items}
    for group in plan.groups:
        family = [designs[i] for i in group]
        assert all(d.silhouette == family[0].silhouette and d.pattern == family[0].pattern for d in family)
        assert len({d.palette.base for d in family}) == len(family)
    none = make_plan(replace(config, colour_variant_share=0.0))
    assert none.groups == () and all(i.group is None for i in none.items)
    assert all(c.variant_of is None for c in none.clips)


def test_shop_boxes_are_tight_around_the_visible_garment() -> None:
    plan = make_plan(replace(TINY, items=4))
    checked = 0
    for item in plan.items:
        for n in range(4):
            render = render_shop_image(item.design, item.instance_id, n, np.random.default_rng([3, item.index, n]),
                                       replace(TINY, overlays=0.0))
            ys, xs = np.nonzero(render.target_mask)
            target = next(i for i in render.instances if i.instance_id == item.instance_id)
            assert target.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert (target.display, target.viewpoint) == (render.display, render.viewpoint)
            assert n > 0 or target.viewpoint == 0, "the first shop image shows the front"
            checked += 1
    assert checked == 16


@pytest.mark.parametrize("angle, centre", [(0.0, (128, 128)), (17.0, (40, 200))])
def test_plain_background_outside_the_box_is_untouched(angle: float, centre: tuple[int, int]) -> None:
    """A garment pasted on a plain backdrop (rotated, partly out of the image): outside its box, plus a
    two-pixel fringe of anti-aliased and resampled edge pixels (alpha < 0.5), every pixel is the backdrop;
    each side of the box touches the garment."""
    design = make_plan(replace(TINY, items=1)).items[0].design
    sprite = flat_sprite(design, FRONT, 40.0, np.random.default_rng(0), TARGET)
    canvas = Canvas(np.full((256, 256, 3), 200, np.uint8), np.zeros((256, 256), np.uint8))
    matrix = np.vstack([cv2.getRotationMatrix2D(sprite.anchors["centre"], angle, 1.0), [0, 0, 1]])
    matrix[:2, 2] += np.asarray(centre) - np.asarray(sprite.anchors["centre"])
    canvas.paste(sprite, matrix, {BODY: BODY, TARGET: TARGET})
    x1, y1, x2, y2 = canvas.visible_boxes([TARGET], 0.0, 1)[TARGET]
    changed = np.any(canvas.image != 200, axis=2)
    grown = np.zeros_like(changed)
    grown[max(y1 - 2, 0):y2 + 2, max(x1 - 2, 0):x2 + 2] = True
    assert not changed[~grown].any()
    assert changed[y1, x1:x2].any() and changed[y2 - 1, x1:x2].any()
    assert changed[y1:y2, x1].any() and changed[y1:y2, x2 - 1].any()


def test_cli_writes_a_dataset_and_contact_sheet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(["--out", str(out), "--items", "3", "--seed", "1", "--clip-frames", "41", "--clip-width", "128",
                 "--clip-height", "224", "--shop-size", "128", "--shop-images-max", "3", "--workers", "1"])
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["items"] == 3
    # Progress from the start: what is to be rendered, then the finished tasks.
    progress = captured.err.splitlines()
    assert progress[0].startswith("rendering 6 tasks: 3 clips of 41 frames"), progress
    assert progress[-1].startswith("6/6 tasks"), progress
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] > 100
    assert main(["--out", str(out), "--items", "3", "--quiet"]) == 2, "refuses to overwrite without --overwrite"
    assert main(["--out", str(out), "--items", "0"]) == 2
