"""Box utilities in the contest's ``[x1, y1, x2, y2]`` absolute-pixel convention, and the seed's aspect groups.

A box's aspect group is the index of the nearest of twelve width/height templates; the embedder resizes each
crop to the input size of its group, so the group is decided once, where the box is found, and travels with it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def clip_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Clip a box to the image and truncate to int, as the seed stored boxes."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1 = min(max(x1, 0.0), width)
    x2 = min(max(x2, 0.0), width)
    y1 = min(max(y1, 0.0), height)
    y2 = min(max(y2, 0.0), height)
    return int(x1), int(y1), int(x2), int(y2)


def is_degenerate(box: Sequence[float], min_side: float = 1.0) -> bool:
    """A box with no area (or a side under ``min_side`` pixels) cannot be cropped."""
    x1, y1, x2, y2 = box
    return (x2 - x1) < min_side or (y2 - y1) < min_side


def iou(a: Sequence[float], b: Sequence[float], plus_one: bool = False) -> float:
    """Intersection over union of two boxes.

    ``plus_one`` uses the mmdet/VOC convention (width = x2 - x1 + 1) that the
    participants' contest evaluator used.
    """
    extra = 1.0 if plus_one else 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0]) + extra
    ih = min(a[3], b[3]) - max(a[1], b[1]) + extra
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area_a = (a[2] - a[0] + extra) * (a[3] - a[1] + extra)
    area_b = (b[2] - b[0] + extra) * (b[3] - b[1] + extra)
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` box arrays (no +1), shape ``(N, M)``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)

ASPECT_TEMPLATES: tuple[float, ...] = (0.25, 0.335, 0.415, 0.5, 0.5721925, 0.66857143, 0.8, 1.0, 1.25,
                                       1.4957264, 1.74766355, 2.0)


def box_aspect(box: Sequence[float]) -> float:
    """Width over height of an ``[x1, y1, x2, y2]`` box (a zero height counts as one pixel)."""
    return float(box[2] - box[0]) / max(float(box[3] - box[1]), 1.0)


def aspect_group(box_or_aspect: Sequence[float] | float) -> int:
    """``argmin |w/h - template|``, ties to the smaller template as ``numpy.argmin`` does."""
    aspect = box_or_aspect if isinstance(box_or_aspect, (int, float)) else box_aspect(box_or_aspect)
    return int(np.argmin(np.abs(np.asarray(ASPECT_TEMPLATES) - float(aspect))))
