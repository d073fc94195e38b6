"""Aspect buckets: every crop is resized to the size of its aspect group, so a batch has one shape.

The group of a box is the detector's (``dataset.boxes``: nearest of the
seed's 12 aspect templates), carried in the boxes JSON for detected boxes and
computed the same way for ground-truth boxes, so that training and inference
bucket a crop identically. The size per group is the 'SM' table of
``metric_sub.config``, whose w/h ratios are those templates.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from dataset.boxes import aspect_group
from dataset.boxes import clip_box, is_degenerate

__all__ = ["aspect_group", "crop", "limit_side", "resize_to_bucket"]


def crop(image: np.ndarray, box: Sequence[float]) -> np.ndarray | None:
    """The box's pixels (clipped to the image), or ``None`` when nothing is left of it."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = clip_box(box, width, height)
    if is_degenerate((x1, y1, x2, y2)):
        return None
    return image[y1:y2, x1:x2]


def resize_to_bucket(patch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``(width, height)`` with bilinear interpolation, as the seed did."""
    return cv2.resize(patch, size, interpolation=cv2.INTER_LINEAR)


def limit_side(patch: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink a crop so its longer side is at most ``max_side``; cached crops then cost bounded memory."""
    longest = max(patch.shape[:2])
    if longest <= max_side:
        return patch
    scale = max_side / longest
    size = (max(1, round(patch.shape[1] * scale)), max(1, round(patch.shape[0] * scale)))
    return cv2.resize(patch, size, interpolation=cv2.INTER_AREA)
