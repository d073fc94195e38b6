"""Things that go with a garment that is not worn: a hanger, and the hands that hold it up.

Both are labelled ``BODY``: they hide the garment where they cover it but are
never annotated.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dataset.synth import shapes
from dataset.synth.colours import RGB
from dataset.synth.compose import BODY, Layer, Raster

HANGER_RISE = 0.45
"""How far (units) the hanger hook rises above the garment's top."""


def hanger(raster: Raster, top: tuple[float, float], half_width: float, colour: RGB) -> Layer:
    """A hook above ``top`` (the garment's top centre) and a bar along its shoulders or waistband."""
    rgb = raster.blank(3)
    rgb[:] = colour
    alpha = raster.blank()
    x, y = top
    hook = np.vstack([shapes.arc((x + 0.08, y - HANGER_RISE + 0.1), (0.08, 0.1), 180, 360, 8),
                      np.array([(x + 0.16, y - HANGER_RISE + 0.14), (x, y - 0.05), (x, y + 0.05)])])
    width = max(1.0, 0.035 * raster.scale)
    shapes.stroke(alpha, [hook], 255, width, raster.origin, raster.scale)
    shapes.stroke(alpha, [np.array([(x - half_width, y + 0.2), (x, y + 0.02), (x + half_width, y + 0.2)])], 255,
                  width * 2, raster.origin, raster.scale)
    return Layer(rgb, alpha, BODY)


def hands(raster: Raster, grips: Sequence[tuple[float, float]], skin: RGB) -> Layer:
    """Two hands gripping a garment at ``grips`` (units), knuckles up."""
    rgb = raster.blank(3)
    rgb[:] = skin
    alpha = raster.blank()
    polys = [shapes.ellipse((gx, gy), 0.13, 0.2, 90.0 + 20 * np.sign(gx)) for gx, gy in grips]
    shapes.fill(alpha, polys, 255, raster.origin, raster.scale)
    return Layer(rgb, alpha, BODY)
