"""2-D outline helpers: smoothing, thick polylines, arcs, and anti-aliased polygon filling.

Garments and bodies are described as polygons in "body units" (one unit is
the presenter's head height) and rasterised at whatever pixel scale a sprite
needs, so the same description serves an 800-pixel shop image and a 270-pixel
test clip.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

_SHIFT = 4  # sub-pixel bits for cv2 polygon drawing: smooth edges at small scales


def chaikin(points: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Round the corners of a closed polygon by corner cutting; cloth has no sharp corners."""
    pts = np.asarray(points, dtype=np.float64)
    for _ in range(iterations):
        nxt = np.roll(pts, -1, axis=0)
        out = np.empty((2 * len(pts), 2))
        out[0::2], out[1::2] = 0.75 * pts + 0.25 * nxt, 0.25 * pts + 0.75 * nxt
        pts = out
    return pts


def arc(center: Sequence[float], radii: Sequence[float], start_deg: float, end_deg: float,
        n: int = 12) -> np.ndarray:
    """Points on an elliptical arc (angles in degrees, y down)."""
    t = np.radians(np.linspace(start_deg, end_deg, n))
    return np.stack([center[0] + radii[0] * np.cos(t), center[1] + radii[1] * np.sin(t)], axis=1)


def ellipse(centre: Sequence[float], a: float, b: float, angle_deg: float = 0.0, n: int = 18) -> np.ndarray:
    """Points of an ellipse with semi-axes ``a`` and ``b``, rotated by ``angle_deg``."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    x, y = a * np.cos(t), b * np.sin(t)
    return np.stack([centre[0] + c * x - s * y, centre[1] + s * x + c * y], axis=1)


def polyline_length(points: np.ndarray) -> np.ndarray:
    """Cumulative length along a polyline, starting at 0."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(seg)])


def truncate_polyline(points: np.ndarray, length: float) -> np.ndarray:
    """The first ``length`` units of a polyline (a sleeve along an arm)."""
    pts = np.asarray(points, dtype=np.float64)
    cum = polyline_length(pts)
    if length >= cum[-1]:
        return pts
    k = int(np.searchsorted(cum, length, side="right"))
    t = (length - cum[k - 1]) / max(cum[k] - cum[k - 1], 1e-9)
    end = pts[k - 1] + t * (pts[k] - pts[k - 1])
    return np.vstack([pts[:k], end])


def thick_polyline(points: np.ndarray, half_widths: Sequence[float]) -> np.ndarray:
    """A closed polygon around a polyline, with a half-width per vertex (limbs, sleeves, straps)."""
    pts = np.asarray(points, dtype=np.float64)
    hw = np.asarray(half_widths, dtype=np.float64)
    d = np.gradient(pts, axis=0) if len(pts) > 2 else np.repeat(np.diff(pts, axis=0), 2, axis=0)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-d[:, 1], d[:, 0]], axis=1)
    left = pts + normal * hw[:, None]
    right = pts - normal * hw[:, None]
    return np.vstack([left, right[::-1]])


def resample_widths(points: np.ndarray, start: float, end: float) -> np.ndarray:
    """Half-widths varying linearly with length from ``start`` to ``end`` along a polyline."""
    cum = polyline_length(np.asarray(points, dtype=np.float64))
    t = cum / max(cum[-1], 1e-9)
    return start + (end - start) * t


def to_pixels(points: np.ndarray, origin: Sequence[float], scale: float) -> np.ndarray:
    """Body units -> fixed-point pixel coordinates for cv2 drawing with ``_SHIFT`` bits."""
    px = (np.asarray(points, dtype=np.float64) - np.asarray(origin)) * scale
    return np.round(px * (1 << _SHIFT)).astype(np.int32)


def fill(canvas: np.ndarray, polygons: Sequence[np.ndarray], value: float | Sequence[float],
         origin: Sequence[float], scale: float) -> None:
    """Fill polygons (in body units) into ``canvas`` with anti-aliased edges.

    Each polygon is filled on its own: cv2 fills a list of polygons with the
    even-odd rule, which would punch holes where a sleeve overlaps the body.
    """
    colour = tuple(float(v) for v in np.atleast_1d(value))
    for polygon in polygons:
        cv2.fillPoly(canvas, [to_pixels(polygon, origin, scale)], colour, lineType=cv2.LINE_AA, shift=_SHIFT)


def stroke(canvas: np.ndarray, lines: Sequence[np.ndarray], value: float | Sequence[float],
           width_px: float, origin: Sequence[float], scale: float, closed: bool = False) -> None:
    """Draw polylines (in body units) with a pixel width of at least one pixel."""
    pts = [to_pixels(p, origin, scale) for p in lines]
    colour = tuple(float(v) for v in np.atleast_1d(value))
    cv2.polylines(canvas, pts, closed, colour, max(1, int(round(width_px))), lineType=cv2.LINE_AA, shift=_SHIFT)


def dots(canvas: np.ndarray, centres: np.ndarray, radius: float, value: float | Sequence[float],
         origin: Sequence[float], scale: float) -> None:
    """Filled circles (buttons, rivets) at centres in body units; radius in body units."""
    colour = tuple(float(v) for v in np.atleast_1d(value))
    r = max(1, int(round(radius * scale * (1 << _SHIFT))))
    for c in to_pixels(np.atleast_2d(centres), origin, scale):
        cv2.circle(canvas, (int(c[0]), int(c[1])), r, colour, -1, lineType=cv2.LINE_AA, shift=_SHIFT)
