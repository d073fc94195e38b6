"""Training and dataset inference of the detector on small generated data, on CPU."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bbox_sub.config import DetectorConfig, load_detector_config
from bbox_sub.detect import Detections
from bbox_sub.evaluate import coco_ap, score_detections
from bbox_sub.model import build_detector
from dataset.boxes_file import BoxesSchemaError, load_boxes, validate_boxes
from bbox_sub.train import train
from dataset.images import write_image
from dataset.synth import SynthConfig, generate
from dataset.video_write import write_mp4
from runtime.checkpoint import load_checkpoint, save_checkpoint

STAGE = ("train.stages=[{name: s1, iterations: %d, base_lr: 0.02, batch_size: 2, schedule: cosine, "
         "warmup_iters: 2, min_sizes: [%s], max_size: 320}]")


def _picture(rng: np.random.Generator, height: int, width: int, box: list[int]) -> np.ndarray:
    image = (rng.random((height, width, 3)) * 60 + 100).astype(np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = rng.integers(0, 255, 3)
    return image


def _box(rng: np.random.Generator, height: int, width: int) -> list[int]:
    w, h = int(rng.integers(width // 4, width // 2)), int(rng.integers(height // 4, height // 2))
    x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
    return [x, y, x + w, y + h]


def _instance(box: list[int]) -> dict:
    return {"label": "短袖上衣", "viewpoint": 0, "display": 1, "instance_id": 0, "box": box}


def write_box_root(root: Path, items: int = 4, clips: int = 2, seed: int = 0, size: int = 128,
                   clip_size: tuple[int, int] = (96, 160), clip_frames: int = 50) -> Path:
    """A contest-layout root of plain coloured boxes, where the test controls every file: ``items`` items with
    two annotated images each, and ``clips`` clips annotated at frames 0, 20, 40."""
    rng = np.random.default_rng(seed)
    for i in range(1, items + 1):
        item_id = f"{i:06d}"
        for n in range(2):
            box = _box(rng, size, size)
            write_image(root / "image" / item_id / f"{n}.jpg", _picture(rng, size, size, box))
            folder = root / "image_annotation" / item_id
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{n}.json").write_text(json.dumps(
                {"item_id": item_id, "img_name": f"{n}.jpg", "annotations": [_instance(box)]}), encoding="utf-8")
        if i <= clips:
            height, width = clip_size
            box = _box(rng, height, width)
            write_mp4(root / "video" / f"{item_id}.mp4",
                      (_picture(rng, height, width, box) for _ in range(clip_frames)), codec="mp4v")
            (root / "video_annotation").mkdir(parents=True, exist_ok=True)
            frames = [{"frame_index": k, "annotations": [_instance(box)]} for k in (0, 20, 40)]
            (root / "video_annotation" / f"{item_id}.json").write_text(
                json.dumps({"video_id": item_id, "frames": frames}), encoding="utf-8")
    return root


def _tiny(iterations: int, sizes: str = "128", *extra: str) -> DetectorConfig:
    return load_detector_config("tiny", [STAGE % (iterations, sizes), "train.workers=0", *extra])


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["event"] == "train"]


def _synthetic_root(tmp_path: Path) -> Path:
    root = tmp_path / "synth"
    generate(root, SynthConfig(items=3, seed=1, shop_size=192, shop_images_min=1, shop_images_max=2,
                               clip_frames=81, clip_width=270, clip_height=480, clutter=1),
             workers=1, contact_sheet=False)
    return root


@pytest.mark.slow
def test_tiny_detector_loss_falls_on_synthetic_data(tmp_path: Path) -> None:
    root = _synthetic_root(tmp_path)
    cfg = _tiny(60, "128, 160", "train.log_every=1", "train.val_fraction=0")
    final = train(cfg, [root], tmp_path / "run", device="cpu")
    assert final is not None and final.is_file()
    losses = _losses(tmp_path / "run")
    assert len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)


def test_resume_reaches_the_same_weights(tmp_path: Path) -> None:
    root = write_box_root(tmp_path / "root", items=3, clips=1)
    cfg = _tiny(4, "96", "train.checkpoint_every=2", "train.val_fraction=0", "train.eval_every=1000")
    straight = train(cfg, [root], tmp_path / "straight", device="cpu")
    assert train(cfg, [root], tmp_path / "resumed", device="cpu", stop_after=3) is None
    resumed = train(cfg, [root], tmp_path / "resumed", device="cpu")
    a = load_checkpoint(straight, weights_only=False)["model"]
    b = load_checkpoint(resumed, weights_only=False)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "resumed")[-1] == _losses(tmp_path / "straight")[-1]


def _weights(tmp_path: Path, cfg: DetectorConfig) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "w.pth", {"model": build_detector(cfg.model).state_dict()})


def test_encoding_skips_corrupt_files_and_writes_valid_boxes(tmp_path: Path) -> None:
    """The detector through the per-source path (``python -m pipeline --stop-after encode``): an unreadable
    clip is skipped, an unreadable shop image is skipped and its item keeps the others, and the boxes file
    validates on read; a rerun recomputes nothing."""
    from metric_sub.config import load_embedder_config
    from metric_sub.model import build_embedder
    from pipeline.run import run_pipeline

    root = write_box_root(tmp_path / "root", items=3, clips=2)
    (root / "video" / "000009.mp4").write_bytes(b"")
    (root / "image" / "000003" / "7.jpg").write_text("not an image", encoding="utf-8")
    cfg = load_detector_config("tiny", ["infer.image_score_thresh=0", "infer.video_score_thresh=0",
                                        "infer.frames=[0, 20, 40, 60]", "infer.image_batch=2"])
    embedder = load_embedder_config("tiny", ["data.bucket_scale=0.2"])
    torch.manual_seed(0)
    embedder_weights = save_checkpoint(tmp_path / "e.pth", {"model": build_embedder(embedder).state_dict()})
    out = tmp_path / "out"
    detector_weights = _weights(tmp_path, cfg)

    def encode():
        return run_pipeline(root, out, detector=(cfg, detector_weights),
                            embedders=[(embedder, embedder_weights)], device="cpu", stop_after="encode",
                            progress=False)

    result = encode()
    parsed = load_boxes(out / "boxes.json")
    assert parsed.processed == {"images": 6, "videos": 2}
    assert {Path(s.path).name for s in parsed.skipped} == {"000009.mp4", "7.jpg"} == \
        {Path(p).name for p in result.skipped}
    assert {b.frame for b in parsed.videos} == {0, 20, 40}  # frame 60 is past the end of the 50-frame clips
    assert {b.item_id for b in parsed.images} == {"000001", "000002", "000003"}
    stored = sorted((out / "sources").glob("*.npz"))
    stamps = [p.stat().st_mtime_ns for p in stored]
    (out / "stages.json").unlink()  # not the stage cache: every source is found in the store
    again = encode()
    assert [p.stat().st_mtime_ns for p in stored] == stamps and again.stages["encode"].resumed_sources == 5
    assert load_boxes(out / "boxes.json").images == parsed.images


def test_schema_rejects_bad_boxes(tmp_path: Path) -> None:
    good = {"format": "bbox_sub.boxes", "version": 1, "config": "tiny", "weights": "w.pth", "settings": {},
            "processed": {"images": 1, "videos": 0}, "skipped": [],
            "images": [{"type": "image", "item_id": "000001", "img_name": "0.jpg", "file": "/x/0.jpg",
                        "width": 100, "height": 80, "bbox": [1, 2, 50, 60], "score": 0.95,
                        "bbox_aspect": 0.845, "aspect_group": 6}],
            "videos": []}
    validate_boxes(good)
    for field, value, message in (("bbox", [1.5, 2, 50, 60], "images.0.bbox.0"),
                                  ("bbox", [1, 2, 150, 60], "outside"),
                                  ("aspect_group", 12, "aspect_group")):
        bad = json.loads(json.dumps(good))
        bad["images"][0][field] = value
        with pytest.raises(BoxesSchemaError, match=message):
            validate_boxes(bad)


def _found(boxes: list[list[float]], scores: list[float]) -> Detections:
    return Detections(np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(scores, dtype=np.float32))


def test_ap_scores_hand_made_detections_and_splits() -> None:
    truth = (100, 200, np.array([[10, 10, 60, 90], [100, 20, 180, 80]], dtype=np.float32))
    exact = _found([[10, 10, 60, 90], [100, 20, 180, 80]], [0.9, 0.8])
    loose = _found([[14, 10, 64, 90], [100, 20, 180, 80]], [0.9, 0.8])  # first box at IoU 0.85
    miss = _found([[0, 0, 5, 5]], [0.99])
    assert coco_ap([truth], [exact]) == {"ap": 1.0, "ap50": 1.0}
    loose_ap = coco_ap([truth], [loose])
    assert loose_ap["ap50"] == 1.0 and 0.5 < loose_ap["ap"] < 1.0
    assert coco_ap([truth], [miss]) == {"ap": 0.0, "ap50": 0.0}
    scored = [("image", truth, exact), ("video", truth, miss)]
    assert score_detections([s for s in scored if s[0] == "image"])["ap50"] == 1.0
    both = score_detections(scored)
    # half the truths found, at precision 2/3 behind the confident miss: 51 of COCO's 101 recall points x 2/3
    assert both["pictures"] == 2 and both["ap50"] == pytest.approx(51 / 101 * 2 / 3, abs=1e-3)
