"""Fabric designs: stripes, checks, dots, florals, camouflage and colour blocks.

A pattern is a small periodic tile drawn at the render scale and sampled
through the garment's body-unit coordinates with ``cv2.remap`` (wrapping), so
it sits on the garment the same way in a shop image and in a clip frame, and
a colour variant (same ``Pattern``, other ``Palette``) has identical geometry.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dataset.synth.colours import Palette

KINDS = ("solid", "stripes", "checks", "dots", "floral", "camo", "blocks")
KIND_WEIGHTS = (0.24, 0.2, 0.13, 0.12, 0.12, 0.07, 0.12)


@dataclass(frozen=True)
class Pattern:
    """Geometry of a fabric design; colours come from roles of a ``Palette``.

    ``bands`` lists colour roles with relative widths (stripes, checks, blocks),
    ``period`` is the repeat in body units, ``angle`` the rotation in degrees,
    ``density`` the dot size or motif count, ``seed`` the layout of random motifs.
    """

    kind: str
    period: float
    angle: float
    bands: tuple[tuple[str, float], ...]
    density: float
    seed: int


def random_pattern(rng: np.random.Generator) -> Pattern:
    """A random design, weighted towards what shops sell most (plain and striped)."""
    kind = str(rng.choice(KINDS, p=np.asarray(KIND_WEIGHTS) / sum(KIND_WEIGHTS)))
    roles = ["base", "second", "accent", "third"]
    if kind == "stripes":
        n = int(rng.integers(2, 5))
        bands = tuple((roles[0] if i % 2 == 0 else roles[1 + (i // 2) % 3], float(rng.uniform(0.3, 1.5))) for i in range(n))
        period = float(rng.uniform(0.12, 0.7))
        angle = float(rng.choice([0.0, 0.0, 90.0, 45.0, -45.0]))
    elif kind == "checks":
        bands = (("base", float(rng.uniform(0.8, 1.5))), ("second", float(rng.uniform(0.4, 1.0))))
        period = float(rng.uniform(0.18, 0.6))
        angle = float(rng.choice([0.0, 0.0, 45.0]))
    elif kind == "blocks":
        bands = (("base", 1.0), ("second", float(rng.uniform(0.3, 0.8))), ("accent", float(rng.uniform(0.05, 0.25))))
        period = float(rng.uniform(0.8, 1.8))
        angle = float(rng.choice([0.0, 90.0, 30.0, -30.0]))
    else:
        bands = (("base", 1.0), ("second", 1.0))
        period = float(rng.uniform(0.2, 0.5)) if kind == "dots" else float(rng.uniform(0.6, 1.4))
        angle = float(rng.uniform(-30, 30)) if kind in ("floral", "camo") else 0.0
    return Pattern(kind, period, angle, bands, float(rng.uniform(0.2, 0.38)), int(rng.integers(1 << 30)))


def _band_index(t: np.ndarray, bands: tuple[tuple[str, float], ...]) -> np.ndarray:
    """Which band a periodic coordinate ``t`` (in periods) falls in."""
    widths = np.array([w for _, w in bands], np.float64)
    edges = np.cumsum(widths) / widths.sum()
    return np.searchsorted(edges, np.mod(t, 1.0), side="right").clip(0, len(bands) - 1)


def _colours(bands: tuple[tuple[str, float], ...], palette: Palette) -> np.ndarray:
    return np.array([palette.role(role) for role, _ in bands], np.float32)


def _tile(pattern: Pattern, palette: Palette, px: int) -> np.ndarray:
    """One repeat of a periodic pattern as a ``(px, px, 3)`` float32 RGB tile."""
    t = (np.arange(px, dtype=np.float64) + 0.5) / px
    if pattern.kind == "stripes":
        row = _colours(pattern.bands, palette)[_band_index(t, pattern.bands)]
        return np.broadcast_to(row[None, :, :], (px, px, 3)).astype(np.float32)
    if pattern.kind == "checks":
        cols = _colours(pattern.bands, palette)
        on = (_band_index(t, pattern.bands) == 1).astype(np.float32)
        weight = (on[None, :] + on[:, None]) / 2.0
        tile = cols[0] * (1 - weight[..., None]) + cols[1] * weight[..., None]
        line = max(1, px // 24)
        tile[:, :line] = tile[:line, :] = np.asarray(palette.accent, np.float32)
        return tile
    if pattern.kind == "dots":
        tile = np.empty((px, px, 3), np.float32)
        tile[:] = palette.base
        radius = pattern.density * px * 0.5
        for cx, cy in ((0.25, 0.25), (0.75, 0.75)):
            cv2.circle(tile, (int(cx * px * 16), int(cy * px * 16)), max(1, int(radius * 16)),
                       tuple(float(c) for c in palette.second), -1, cv2.LINE_AA, 4)
        return tile
    if pattern.kind == "floral":
        return _floral_tile(pattern, palette, px)
    if pattern.kind == "camo":
        return _camo_tile(pattern, palette, px)
    tile = np.empty((px, px, 3), np.float32)
    tile[:] = palette.base
    return tile


def _floral_tile(pattern: Pattern, palette: Palette, px: int) -> np.ndarray:
    """Scattered five-petal flowers and leaves, drawn with wrap-around so the tile repeats seamlessly."""
    rng = np.random.default_rng(pattern.seed)
    tile = np.empty((px, px, 3), np.float32)
    tile[:] = palette.base
    count = 3 + int(pattern.density * 12)
    for _ in range(count):
        cx, cy = rng.uniform(0, px, 2)
        size = px * rng.uniform(0.06, 0.12)
        petal = palette.second if rng.random() < 0.6 else palette.third
        angle0 = rng.uniform(0, 72)
        for dx in (-px, 0, px):
            for dy in (-px, 0, px):
                x, y = cx + dx, cy + dy
                leaf_angle = angle0 + 180
                lx, ly = x + 1.6 * size * np.cos(np.radians(leaf_angle)), y + 1.6 * size * np.sin(np.radians(leaf_angle))
                cv2.ellipse(tile, (int(lx), int(ly)), (max(1, int(size * 0.9)), max(1, int(size * 0.4))), leaf_angle,
                            0, 360, tuple(float(c) for c in palette.accent), -1, cv2.LINE_AA)
                for k in range(5):
                    a = np.radians(angle0 + 72 * k)
                    px_, py_ = x + size * 0.7 * np.cos(a), y + size * 0.7 * np.sin(a)
                    cv2.ellipse(tile, (int(px_), int(py_)), (max(1, int(size * 0.6)), max(1, int(size * 0.38))),
                                float(np.degrees(a)), 0, 360, tuple(float(c) for c in petal), -1, cv2.LINE_AA)
                cv2.circle(tile, (int(x), int(y)), max(1, int(size * 0.3)), tuple(float(c) for c in palette.accent), -1, cv2.LINE_AA)
    return tile


def _camo_tile(pattern: Pattern, palette: Palette, px: int) -> np.ndarray:
    """Smooth random blobs in three colours (camouflage or tie-dye), periodic by construction."""
    rng = np.random.default_rng(pattern.seed)
    cells = 6
    coarse = rng.random((cells, cells)).astype(np.float32)
    field = cv2.resize(np.tile(coarse, (3, 3)), (3 * px, 3 * px), interpolation=cv2.INTER_CUBIC)[px:2 * px, px:2 * px]
    colours = np.array([palette.base, palette.second, palette.third], np.float32)
    index = np.digitize(field, [0.42, 0.68])
    return colours[index]


def fill(pattern: Pattern, palette: Palette, xs: np.ndarray, ys: np.ndarray, scale: float,
         span: tuple[float, float]) -> np.ndarray:
    """The fabric colour at body-unit coordinates ``xs, ys`` as a float32 RGB image.

    ``scale`` (pixels per unit) sets the tile resolution so that stripes stay
    sharp at every render size; ``span`` is the garment's top and bottom y,
    which places colour blocks relative to the garment.
    """
    if pattern.kind == "blocks":
        return _blocks(pattern, palette, xs, ys, span)
    if pattern.kind == "solid":
        out = np.empty(xs.shape + (3,), np.float32)
        out[:] = palette.base
        return out
    px = int(np.clip(round(pattern.period * scale), 4, 512))
    tile = _tile(pattern, palette, px)
    a = np.radians(pattern.angle)
    u = (xs * np.cos(a) + ys * np.sin(a)) * (px / pattern.period)
    v = (-xs * np.sin(a) + ys * np.cos(a)) * (px / pattern.period)
    return cv2.remap(np.ascontiguousarray(tile), u.astype(np.float32), v.astype(np.float32),
                     cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)


def _blocks(pattern: Pattern, palette: Palette, xs: np.ndarray, ys: np.ndarray,
            span: tuple[float, float]) -> np.ndarray:
    """Colour blocking: a panel of the second colour cut by a straight line, edged with a thin accent band."""
    a = np.radians(pattern.angle)
    top, bottom = span
    t = np.sin(a) * xs / 1.2 + np.cos(a) * (ys - top) / max(bottom - top, 1e-3)
    cut = 0.25 + pattern.density * 1.2
    accent_w = pattern.bands[2][1] * 0.15
    out = np.empty(xs.shape + (3,), np.float32)
    out[:] = palette.base
    out[t > cut] = palette.second
    out[(t > cut - accent_w) & (t <= cut)] = palette.accent
    return out
