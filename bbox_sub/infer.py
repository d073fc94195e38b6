"""From the detector's raw findings to boxes: the inference settings' thresholds, clipping, and the aspect group
each box carries (the boxes-file record, ``dataset.boxes_file``); the batch run and the service call these
through ``pipeline.source``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bbox_sub.config import DetectorConfig
from bbox_sub.detect import Detections
from dataset.boxes import aspect_group, box_aspect, clip_box, is_degenerate
from dataset.jsonio import digest, file_stamp


def box_records(found: Detections, threshold: float, width: int, height: int,
                fields: dict[str, Any]) -> list[dict[str, Any]]:
    """Boxes at or above ``threshold`` as schema records: clipped, truncated to int, with aspect group."""
    records = []
    for box, score in zip(found.boxes, found.scores):
        if score < threshold:
            continue
        bbox = clip_box(box, width, height)
        if is_degenerate(bbox):
            continue
        records.append({**fields, "width": width, "height": height, "bbox": list(bbox),
                        "score": round(float(score), 6), "bbox_aspect": round(box_aspect(bbox), 6),
                        "aspect_group": aspect_group(bbox)})
    return records


def fingerprint(cfg: DetectorConfig, weights: Path | str) -> str:
    """Changes when the model, the inference settings or the weights file change."""
    return digest(cfg.model.model_dump(mode="json"), cfg.infer.model_dump(mode="json"), file_stamp(weights))
