"""COCO-style AP and AP50 of a detector on annotated samples, computed by pycocotools."""
from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bbox_sub.data import Sample, load_picture
from bbox_sub.detect import BatchDetector, Detections
from dataset.errors import DataError


Truth = tuple[int, int, np.ndarray]
"""A picture's ``(height, width, ground-truth boxes)``."""


def _xywh(box: np.ndarray) -> list[float]:
    return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]


def coco_ap(truths: list[Truth], detections: list[Detections]) -> dict[str, float]:
    """``ap`` (IoU 0.50:0.95) and ``ap50`` over pictures given as ``(height, width, boxes)`` with their detections."""
    gt: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "clothes"}]}
    results = []
    for image_id, ((height, width, boxes), found) in enumerate(zip(truths, detections), start=1):
        gt["images"].append({"id": image_id, "height": height, "width": width})
        for box in boxes:
            xywh = _xywh(box)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                                      "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0})
        results += [{"image_id": image_id, "category_id": 1, "bbox": _xywh(b), "score": float(s)}
                    for b, s in zip(found.boxes, found.scores)]
    if not gt["annotations"] or not results:
        return {"ap": 0.0, "ap50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"ap": max(float(evaluator.stats[0]), 0.0), "ap50": max(float(evaluator.stats[1]), 0.0)}


def detect_samples(detector: BatchDetector, samples: list[Sample], image_size: tuple[int, int],
                   frame_size: tuple[int, int], batch_size: int = 8) -> list[tuple[str, Truth, Detections]]:
    """``(kind, truth, detections)`` per readable sample: one pass that any split of the samples can be scored on."""
    scored: list[tuple[str, Truth, Detections]] = []
    for kind, (short_side, max_size) in (("image", image_size), ("video", frame_size)):
        chosen = [s for s in samples if s.kind == kind]
        for start in range(0, len(chosen), batch_size):
            pictures, boxes = [], []
            for sample in chosen[start:start + batch_size]:
                try:
                    picture, truth = load_picture(sample)
                except DataError:
                    continue
                pictures.append(picture)
                boxes.append(truth)
            found = detector(pictures, short_side, max_size)
            scored += [(kind, (p.shape[0], p.shape[1], b), f) for p, b, f in zip(pictures, boxes, found)]
    return scored


def score_detections(scored: list[tuple[str, Truth, Detections]]) -> dict[str, float]:
    """AP, AP50 and the picture count of ``detect_samples`` output (or any subset of it)."""
    return {**coco_ap([t for _, t, _ in scored], [f for _, _, f in scored]), "pictures": len(scored)}


def evaluate(detector: BatchDetector, samples: list[Sample], image_size: tuple[int, int],
             frame_size: tuple[int, int], batch_size: int = 8) -> dict[str, float]:
    """AP over shop images (at ``image_size`` = short side, max size) and clip frames (at ``frame_size``)."""
    return score_detections(detect_samples(detector, samples, image_size, frame_size, batch_size))
