"""The seed's aspect groups: the index of the nearest of twelve width/height templates.

The embedder resizes each crop to the input size of its group, so a box's
group is decided once here and travels with the box.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ASPECT_TEMPLATES: tuple[float, ...] = (0.25, 0.335, 0.415, 0.5, 0.5721925, 0.66857143, 0.8, 1.0, 1.25,
                                       1.4957264, 1.74766355, 2.0)


def box_aspect(box: Sequence[float]) -> float:
    """Width over height of an ``[x1, y1, x2, y2]`` box (a zero height counts as one pixel)."""
    return float(box[2] - box[0]) / max(float(box[3] - box[1]), 1.0)


def aspect_group(box_or_aspect: Sequence[float] | float) -> int:
    """``argmin |w/h - template|``, ties to the smaller template as ``numpy.argmin`` does."""
    aspect = box_or_aspect if isinstance(box_or_aspect, (int, float)) else box_aspect(box_or_aspect)
    return int(np.argmin(np.abs(np.asarray(ASPECT_TEMPLATES) - float(aspect))))
