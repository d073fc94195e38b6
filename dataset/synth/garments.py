"""Garment designs and their rendering as layers: silhouette + fabric pattern + details + shading.

A ``Design`` is pure data (silhouette, pattern, palette, prints) so it can be
written to the manifest, sent to a worker and recoloured into a colour
variant. ``render`` draws it in a given view (0 front, 1 back) and pose on a
``Raster``. Front and back differ the way real garments do: neckline depth,
collar, buttons, pockets and prints are only on one side.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import cv2
import numpy as np

from dataset.labels import CATEGORIES
from dataset.records import Instance
from dataset.synth import body as B
from dataset.synth import patterns, shapes
from dataset.synth.colours import Palette, delta_e, random_palette, variant_palette
from dataset.synth.compose import Layer, Raster

FRONT, BACK = 0, 1

# kind: (part, draw weight). "outer" garments are worn over an upper one.
KINDS: dict[str, tuple[str, float]] = {
    "tee": ("upper", 0.15), "shirt": ("upper", 0.13), "tank": ("upper", 0.05), "cami": ("upper", 0.05),
    "sleeveless": ("upper", 0.05), "dress": ("full", 0.18), "skirt": ("lower", 0.12), "trousers": ("lower", 0.14),
    "jacket": ("outer", 0.07), "coat": ("outer", 0.06),
}

CATEGORY = {name: i for i, name in enumerate(CATEGORIES)}

LOOKALIKE_DELTA_E = 25.0
"""Unrelated items of the same cut and pattern kind keep their main colours at least this far apart (Lab)."""


@dataclass(frozen=True)
class Silhouette:
    """The cut of a garment, in body units; ``category`` indexes ``dataset.labels.CATEGORIES``."""

    kind: str
    category: int
    part: str
    hem_y: float
    shoulder: float
    chest: float
    waist: float
    hem: float
    sleeve: float
    cuff: float
    neckline: str
    neck_depth: float
    closure: str
    pockets: bool
    leg: float
    pleats: int

    @property
    def label(self) -> str:
        return CATEGORIES[self.category]

    @property
    def top_y(self) -> float:
        return B.NECK_Y - 0.08 if self.part != "lower" else B.WAIST_Y


@dataclass(frozen=True)
class Graphic:
    """A print or logo: text and/or a shape, coloured by palette roles, centred at ``centre`` (units)."""

    text: str
    shape: str
    text_role: str
    shape_role: str
    width: float
    centre: tuple[float, float]


@dataclass(frozen=True)
class Design:
    """Everything that makes a garment look like itself."""

    silhouette: Silhouette
    pattern: patterns.Pattern
    palette: Palette
    trim: str
    front: Graphic | None
    back: Graphic | None

    @property
    def label(self) -> str:
        return self.silhouette.label

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Shown:
    """A garment as it appears in an image or frame: its annotation, less the box.

    ``viewpoint`` ``None`` means "the way the presenter wearing it faces".
    """

    design: Design
    instance_id: int
    display: int
    viewpoint: int | None

    def instance(self, box: tuple[int, int, int, int], facing: int = FRONT) -> Instance:
        viewpoint = facing if self.viewpoint is None else self.viewpoint
        return Instance(box, self.instance_id, self.design.label, self.design.silhouette.category, viewpoint, self.display)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def random_silhouette(rng: np.random.Generator, part: str | None = None) -> Silhouette:
    """A random cut; ``part`` restricts it to "upper", "lower", "full" or "outer" garments."""
    names = [k for k, (p, _) in KINDS.items() if part is None or p == part]
    weights = np.array([KINDS[k][1] for k in names])
    kind = str(rng.choice(names, p=weights / weights.sum()))
    return _SILHOUETTES[kind](rng)


def _top(rng: np.random.Generator, kind: str) -> Silhouette:
    long_sleeve = rng.random() < 0.45
    sleeve = _u(rng, 2.45, 2.62) if long_sleeve else _u(rng, 0.5, 0.85)
    chest = _u(rng, 0.95, 1.1)
    waist = chest - _u(rng, 0.0, 0.12)
    if kind == "shirt":
        category = CATEGORY["长袖衬衫" if long_sleeve else "短袖衬衫"]
        neckline, depth, closure, hem_y = "collar", 0.32, "buttons", _u(rng, 4.0, 4.6)
    else:
        category = CATEGORY["长袖上衣" if long_sleeve else "短袖上衣"]
        neckline = str(rng.choice(["round", "round", "v", "square"]))
        depth, closure, hem_y = _u(rng, 0.12, 0.45), "none", _u(rng, 3.85, 4.4)
    return Silhouette(kind, category, "upper", hem_y, _u(rng, 1.0, 1.1), chest, waist, waist + _u(rng, 0.0, 0.12),
                      sleeve, _u(rng, 0.17, 0.3), neckline, depth, closure, rng.random() < 0.3, 0.0, 0)


def _sleeveless_top(rng: np.random.Generator, kind: str) -> Silhouette:
    chest = _u(rng, 0.88, 1.02)
    waist = chest - _u(rng, 0.0, 0.1)
    category = CATEGORY[{"tank": "背心上衣", "cami": "吊带上衣", "sleeveless": "无袖上衣"}[kind]]
    shoulder = {"tank": _u(rng, 0.5, 0.6), "cami": 0.42, "sleeveless": _u(rng, 0.78, 0.9)}[kind]
    neckline = "strap" if kind == "cami" else str(rng.choice(["round", "v", "square"]))
    return Silhouette(kind, category, "upper", _u(rng, 3.7, 4.3), shoulder, chest, waist, waist + _u(rng, 0, 0.15),
                      0.0, 0.0, neckline, _u(rng, 0.2, 0.55), "none", False, 0.0, 0)


def _dress(rng: np.random.Generator, kind: str) -> Silhouette:
    style = int(rng.integers(3))
    hem_y = _u(rng, 4.9, 7.2)
    flare = _u(rng, 0.08, 0.45)
    waist = _u(rng, 0.68, 0.8)
    hem = 0.9 + flare * (hem_y - B.HIP_Y)
    if style == 0:
        category, sleeve, shoulder, neckline = CATEGORY["长袖连衣裙"], _u(rng, 2.45, 2.6), _u(rng, 0.98, 1.06), "round"
    elif style == 1:
        category, sleeve, shoulder, neckline = CATEGORY["短袖连衣裙"], _u(rng, 0.45, 0.8), _u(rng, 0.98, 1.06), str(rng.choice(["round", "v", "square"]))
    else:
        category, sleeve, shoulder = CATEGORY["无袖连衣裙"], 0.0, _u(rng, 0.42, 0.85)
        neckline = "strap" if shoulder < 0.5 else str(rng.choice(["round", "v", "square"]))
    return Silhouette(kind, category, "full", hem_y, shoulder, _u(rng, 0.9, 1.0), waist, hem, sleeve, _u(rng, 0.15, 0.28),
                      neckline, _u(rng, 0.15, 0.5), "buttons" if rng.random() < 0.2 else "none", False, 0.0,
                      int(rng.integers(5, 11)) if rng.random() < 0.3 else 0)


def _skirt(rng: np.random.Generator, kind: str) -> Silhouette:
    length = int(rng.integers(3))
    hem_y = [_u(rng, 4.35, 4.85), _u(rng, 5.3, 6.0), _u(rng, 6.5, 7.2)][length]
    category = CATEGORY[["短裙", "中等半身裙", "长半身裙"][length]]
    flare = _u(rng, 0.03, 0.3)
    return Silhouette(kind, category, "lower", hem_y, 0.0, 0.0, _u(rng, 0.6, 0.68), 0.88 + flare * (hem_y - B.HIP_Y),
                      0.0, 0.0, "none", 0.0, "buttons" if rng.random() < 0.15 else "none", False, 0.0,
                      int(rng.integers(6, 14)) if rng.random() < 0.35 else 0)


def _trousers(rng: np.random.Generator, kind: str) -> Silhouette:
    length = int(rng.integers(3))
    hem_y = [_u(rng, 4.4, 4.85), _u(rng, 5.9, 6.6), _u(rng, 7.2, 7.42)][length]
    category = CATEGORY[["短裤", "中裤", "长裤"][length]]
    return Silhouette(kind, category, "lower", hem_y, 0.0, 0.0, _u(rng, 0.6, 0.68), 0.0, 0.0, 0.0, "none", 0.0,
                      "none", rng.random() < 0.7, _u(rng, 0.18, 0.36), 0)


def _outer(rng: np.random.Generator, kind: str) -> Silhouette:
    long_coat = kind == "coat"
    hem_y = _u(rng, 5.4, 6.9) if long_coat else _u(rng, 3.9, 4.45)
    chest = _u(rng, 1.05, 1.16)
    category = CATEGORY["长外套" if long_coat else "短外套"]
    neckline = "lapel" if long_coat or rng.random() < 0.5 else "collar"
    closure = "buttons" if long_coat or rng.random() < 0.4 else "zip"
    hem = chest + (_u(rng, 0.05, 0.3) if long_coat else _u(rng, -0.05, 0.06))
    return Silhouette(kind, category, "outer", hem_y, _u(rng, 1.06, 1.16), chest, chest - _u(rng, 0.0, 0.12), hem,
                      _u(rng, 2.5, 2.66), _u(rng, 0.22, 0.3), neckline, 0.3, closure, rng.random() < 0.7, 0.0, 0)


_SILHOUETTES = {
    "tee": lambda r: _top(r, "tee"), "shirt": lambda r: _top(r, "shirt"),
    "tank": lambda r: _sleeveless_top(r, "tank"), "cami": lambda r: _sleeveless_top(r, "cami"),
    "sleeveless": lambda r: _sleeveless_top(r, "sleeveless"), "dress": lambda r: _dress(r, "dress"),
    "skirt": lambda r: _skirt(r, "skirt"), "trousers": lambda r: _trousers(r, "trousers"),
    "jacket": lambda r: _outer(r, "jacket"), "coat": lambda r: _outer(r, "coat"),
}

_SYLLABLES = ("LU", "NA", "VO", "RA", "KI", "MO", "SA", "EL", "OR", "BE", "ZE", "TA", "NO", "VI", "AU", "RE", "MI", "XO")


def random_text(rng: np.random.Generator) -> str:
    """A made-up brand word, sometimes with a number, e.g. ``LUNA 07``."""
    word = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4))))
    return f"{word} {int(rng.integers(1, 99)):02d}" if rng.random() < 0.35 else word


def random_graphic(rng: np.random.Generator, sil: Silhouette, side: int) -> Graphic | None:
    """A print for one side of a garment, or ``None``; prints differ front to back, as on real clothes."""
    if sil.part == "lower":
        if side == BACK and sil.kind == "trousers" and rng.random() < 0.4:
            return Graphic(random_text(rng)[:4], "rect", "base", "accent", 0.3, (0.4, 3.28))
        return None
    chance = 0.5 if side == FRONT else 0.3
    if sil.neckline in ("collar", "lapel") or rng.random() > chance:
        return None
    shape = str(rng.choice(["none", "circle", "star", "heart", "band", "rect"]))
    text = random_text(rng) if shape in ("none", "band", "rect") or rng.random() < 0.6 else ""
    small = rng.random() < 0.35
    width = _u(rng, 0.25, 0.4) if small else _u(rng, 0.7, 1.3)
    centre = (_u(rng, 0.35, 0.5) * (1 if rng.random() < 0.5 else -1), 2.05) if small else (0.0, _u(rng, 2.2, 2.6))
    return Graphic(text, shape, str(rng.choice(["accent", "second"])), str(rng.choice(["second", "third", "accent"])),
                   width, centre)


def random_design(rng: np.random.Generator, part: str | None = None) -> Design:
    """A complete random garment design."""
    sil = random_silhouette(rng, part)
    pattern = patterns.random_pattern(rng)
    palette = random_palette(rng)
    trim = str(rng.choice(["base", "base", "second", "accent"]))
    return Design(sil, pattern, palette, trim, random_graphic(rng, sil, FRONT), random_graphic(rng, sil, BACK))


def colour_variant(design: Design, siblings: list[Design], rng: np.random.Generator) -> Design:
    """The same garment in other colours: silhouette, pattern geometry and print text unchanged."""
    return replace(design, palette=variant_palette(design.palette, [s.palette for s in siblings], rng))


def looks_alike(a: Design, b: Design) -> bool:
    """Same cut, same kind of pattern and close main colours: nobody could tell which is which in a clip.

    Only colour variants are allowed to come this close; unrelated items are
    redrawn, so that every item can be recognised by a good model.
    """
    return (a.silhouette.kind == b.silhouette.kind and a.pattern.kind == b.pattern.kind
            and delta_e(a.palette.base, b.palette.base) < LOOKALIKE_DELTA_E)


def distinct(make: Callable[[], Design], others: Sequence[Design], tries: int = 30) -> Design:
    """The first design from ``make`` that looks like none of ``others`` (the last try if none does)."""
    design = make()
    for _ in range(tries - 1):
        if not any(looks_alike(design, other) for other in others):
            break
        design = make()
    return design


def tucked(design: Design) -> Design:
    """The same top worn tucked in (hem just below the waist), so the skirt or trousers under it show."""
    sil = design.silhouette
    if sil.part != "upper" or sil.hem_y <= B.WAIST_Y + 0.3:
        return design
    return replace(design, silhouette=replace(sil, hem_y=B.WAIST_Y + 0.3, hem=min(sil.hem, sil.waist + 0.05)))


@dataclass
class Outline:
    """The drawable parts of a garment in one view and pose, in body units."""

    body: list[np.ndarray]
    sleeves: list[np.ndarray]
    seams: list[np.ndarray]
    trims: list[np.ndarray]
    buttons: np.ndarray
    span: tuple[float, float]
    grips: tuple[tuple[float, float], tuple[float, float]]


def _mirror(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(-x, y) for x, y in reversed(points)]


def _neckline(sil: Silhouette, view: int) -> list[tuple[float, float]]:
    """Neck opening from the left neck point to the right one (drawn right to left when closing the outline)."""
    top = B.NECK_Y - 0.06
    width = 0.34 if sil.neckline in ("v", "square") else 0.3
    depth = sil.neck_depth if view == FRONT and sil.neckline not in ("collar", "lapel") else 0.08
    if sil.neckline == "lapel":
        width, depth = 0.26, 0.06
    if view == FRONT and sil.neckline == "v":
        return [(width, top), (0.0, top + depth), (-width, top)]
    if view == FRONT and sil.neckline == "square":
        return [(width, top), (width, top + depth), (-width, top + depth), (-width, top)]
    return [tuple(p) for p in shapes.arc((0.0, top), (width, depth), 0, 180, 10)]  # type: ignore[misc]


def _upper_side(sil: Silhouette) -> list[tuple[float, float]]:
    """The right edge of a top, dress or coat from the shoulder to the hem."""
    pts: list[tuple[float, float]] = []
    if sil.neckline == "strap":
        pts.append((sil.chest * 0.92, B.ARMPIT_Y - 0.12))
    elif sil.sleeve == 0:
        pts += [(sil.shoulder, B.SHOULDER_Y - 0.06), (sil.shoulder + 0.06, 1.75), (sil.chest - 0.05, 2.02), (sil.chest, B.ARMPIT_Y + 0.08)]
    else:
        pts += [(sil.shoulder, B.SHOULDER_Y), (sil.chest, B.ARMPIT_Y)]
    if sil.hem_y > B.WAIST_Y + 0.25:
        pts.append((sil.waist, B.WAIST_Y))
    if sil.hem_y > B.HIP_Y + 0.25:
        hip = max(sil.waist + 0.12, 0.88) if sil.part != "outer" else max(sil.hem - 0.1, sil.chest)
        pts.append((min(hip, sil.hem), B.HIP_Y))
    pts.append((sil.hem, sil.hem_y))
    pts.append((sil.hem * 0.5, sil.hem_y + 0.03))
    return pts


def _sleeves(sil: Silhouette, pose: B.Pose) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Sleeve polygons along the arms, plus cuff seam lines."""
    polys, seams = [], []
    for side in (1, -1):
        spine = shapes.truncate_polyline(pose.arm(side), sil.sleeve)
        dense = np.vstack([np.linspace(spine[i], spine[i + 1], 4, endpoint=False) for i in range(len(spine) - 1)] + [spine[-1:]])
        widths = shapes.resample_widths(dense, 0.34, sil.cuff)
        poly = shapes.thick_polyline(dense, widths)
        shoulder = (side * sil.shoulder, B.SHOULDER_Y)
        outer, inner = (poly[-1], poly[0]) if side > 0 else (poly[0], poly[-1])
        cap = np.array([(side * (sil.shoulder - 0.35), B.SHOULDER_Y - 0.02), shoulder, outer, inner])
        polys += [cap, poly]
        end, across = dense[-1], poly[len(dense) - 1] - dense[-1]
        back = (end - dense[-2]) * 0.3
        seams.append(np.array([end + across - back, end - across - back]))
    return polys, seams


def _upper(sil: Silhouette, view: int, pose: B.Pose) -> Outline:
    right = _upper_side(sil)
    neck = _neckline(sil, view)
    outline = right + _mirror(right)
    if sil.neckline == "strap":
        top_y = B.ARMPIT_Y - 0.1
        outline += [(-0.3, top_y - 0.02), (0.0, top_y + (0.06 if view == FRONT else -0.02)), (0.3, top_y - 0.02)]
    else:
        outline += list(reversed(neck))
    body = [shapes.chaikin(np.array(outline), 2)]
    seams: list[np.ndarray] = [np.array([(x, y - 0.07) for x, y in right[-2:]] + [(-x, y - 0.07) for x, y in reversed(right[-2:])])]
    trims: list[np.ndarray] = []
    sleeves: list[np.ndarray] = []
    buttons: list[tuple[float, float]] = []
    if sil.neckline == "strap":
        for side in (1, -1):
            body.append(shapes.thick_polyline(np.array([(side * 0.3, B.ARMPIT_Y - 0.08), (side * 0.36, B.NECK_Y + 0.02)]), [0.035, 0.03]))
    if sil.sleeve > 0:
        sleeves, cuffs = _sleeves(sil, pose)
        seams += cuffs
        seams += [np.array([(side * sil.shoulder, B.SHOULDER_Y), (side * (sil.chest - 0.04), B.ARMPIT_Y)]) for side in (1, -1)]
    if sil.part == "full" and sil.hem_y > B.WAIST_Y + 0.5:
        seams.append(shapes.arc((0.0, B.WAIST_Y - 0.15), (sil.waist, 0.15), 10, 170, 12))
    trims += _collar(sil, view)
    if view == FRONT and sil.closure != "none" and sil.neckline != "strap":
        start = B.NECK_Y + (0.3 if sil.neckline == "collar" else 0.9 if sil.neckline == "lapel" else sil.neck_depth - 0.02)
        end = sil.hem_y - 0.1 if sil.part != "full" else B.WAIST_Y - 0.1
        seams.append(np.array([(0.06, start), (0.06, end)]))
        if sil.closure == "buttons":
            buttons += [(0.0, y) for y in np.arange(start + 0.12, end, 0.42 if sil.part != "outer" else 0.55)]
        else:
            seams.append(np.array([(0.0, start), (0.0, end)]))
    if view == FRONT and sil.pockets:
        pocket_y = 2.15 if sil.part == "upper" else min(sil.hem_y - 0.7, 3.55)
        sides = (1,) if sil.part == "upper" else (1, -1)
        for side in sides:
            x = side * (0.48 if sil.part == "upper" else 0.6)
            seams.append(np.array([(x - 0.22, pocket_y), (x - 0.22, pocket_y + 0.38), (x + 0.22, pocket_y + 0.38),
                                   (x + 0.22, pocket_y), (x - 0.22, pocket_y)]))
    if view == BACK and sil.kind in ("shirt", "jacket", "coat"):
        seams.append(np.array([(-sil.shoulder + 0.1, 1.78), (sil.shoulder - 0.1, 1.78)]))
    if view == BACK and sil.kind in ("coat", "dress"):
        seams.append(np.array([(0.0, B.NECK_Y + 0.05), (0.0, B.WAIST_Y if sil.kind == "dress" else sil.hem_y - 0.05)]))
    grips = ((sil.shoulder * 0.9, B.SHOULDER_Y + 0.05), (-sil.shoulder * 0.9, B.SHOULDER_Y + 0.05))
    if sil.neckline == "strap":
        grips = ((0.34, B.NECK_Y + 0.1), (-0.34, B.NECK_Y + 0.1))
    return Outline(body, sleeves, seams, trims, np.array(buttons, np.float64).reshape(-1, 2), (sil.top_y, sil.hem_y + 0.05), grips)


def _collar(sil: Silhouette, view: int) -> list[np.ndarray]:
    """Shirt collars and coat lapels (front), or the collar band seen from the back."""
    top = B.NECK_Y - 0.08
    if sil.neckline == "collar":
        if view == BACK:
            return [np.array([(-0.34, top), (0.34, top), (0.36, top + 0.16), (-0.36, top + 0.16)])]
        return [shapes.chaikin(np.array([(0.0, top + 0.33), (side * 0.32, top - 0.02), (side * 0.42, top + 0.08),
                                         (side * 0.28, top + 0.4)]), 1) for side in (1, -1)]
    if sil.neckline == "lapel":
        if view == BACK:
            return [np.array([(-0.4, top - 0.02), (0.4, top - 0.02), (0.44, top + 0.2), (-0.44, top + 0.2)])]
        return [np.array([(0.02, top + 1.05), (side * 0.28, top), (side * 0.52, top + 0.12), (side * 0.44, top + 0.45),
                          (side * 0.56, top + 0.55), (side * 0.1, top + 1.1)]) for side in (1, -1)]
    return []


def _lower(sil: Silhouette, view: int, pose: B.Pose) -> Outline:
    top = B.WAIST_Y
    seams: list[np.ndarray] = [np.array([(-sil.waist, top + 0.16), (sil.waist, top + 0.16)])]
    trims: list[np.ndarray] = [np.array([(-sil.waist, top), (sil.waist, top), (sil.waist + 0.01, top + 0.16), (-sil.waist - 0.01, top + 0.16)])]
    buttons: list[tuple[float, float]] = []
    if sil.kind == "skirt":
        right = [(sil.waist, top), (min(0.88, sil.hem), B.HIP_Y if sil.hem_y > B.HIP_Y + 0.2 else sil.hem_y - 0.2),
                 (sil.hem, sil.hem_y), (sil.hem * 0.5, sil.hem_y + 0.05)]
        body = [shapes.chaikin(np.array(right + _mirror(right)), 2)]
        for k in range(sil.pleats):
            t = (k + 0.5) / sil.pleats * 2 - 1
            seams.append(np.array([(t * sil.waist * 0.9, top + 0.2), (t * sil.hem * 0.95, sil.hem_y - 0.02)]))
        if view == FRONT and sil.closure == "buttons":
            buttons += [(0.0, y) for y in np.arange(top + 0.35, sil.hem_y - 0.1, 0.4)]
        if view == BACK:
            seams.append(np.array([(0.0, top + 0.16), (0.0, min(top + 1.2, sil.hem_y - 0.1))]))
        grips = ((sil.waist, top + 0.05), (-sil.waist, top + 0.05))
        return Outline(body, [], seams, trims, np.array(buttons).reshape(-1, 2), (top, sil.hem_y + 0.05), grips)
    right: list[tuple[float, float]] = [(sil.waist, top), (0.88, B.HIP_Y)]
    inner: list[tuple[float, float]] = []
    for y in [v for v in (B.KNEE_Y,) if v < sil.hem_y - 0.3] + [sil.hem_y]:
        cx, half = pose.leg_x(1, y), _leg_half_width(sil, y)
        right.append((cx + half, y))
        inner.insert(0, (max(cx - half, 0.03), y))
    crotch = [(0.04, B.CROTCH_Y)]
    right_side = right + inner + crotch
    body = [shapes.chaikin(np.array(right_side + _mirror(right_side)), 1)]
    for side in (1, -1):
        hem_x, half = pose.leg_x(side, sil.hem_y), _leg_half_width(sil, sil.hem_y)
        seams.append(np.array([(hem_x - half + 0.02, sil.hem_y - 0.1), (hem_x + half - 0.02, sil.hem_y - 0.1)]))
        if view == FRONT and sil.pockets:
            seams.append(np.array([(side * 0.42, top + 0.16), (side * 0.78, top + 0.6)]))
        if view == BACK and sil.pockets:
            x = side * 0.42
            seams.append(np.array([(x - 0.18, 3.3), (x + 0.18, 3.3), (x + 0.16, 3.7), (x, 3.78), (x - 0.16, 3.7), (x - 0.18, 3.3)]))
    if view == FRONT:
        seams.append(np.array([(0.0, top + 0.16), (0.0, B.CROTCH_Y - 0.12)]))
        seams.append(np.array([(0.12, top + 0.16), (0.12, B.CROTCH_Y - 0.3), (0.0, B.CROTCH_Y - 0.15)]))
        buttons.append((0.0, top + 0.08))
    grips = ((sil.waist, top + 0.05), (-sil.waist, top + 0.05))
    return Outline(body, [], seams, trims, np.array(buttons).reshape(-1, 2), (top, sil.hem_y + 0.05), grips)


def _leg_half_width(sil: Silhouette, y: float) -> float:
    """Half-width of a trouser leg at height ``y``: from the thigh to the hem width ``sil.leg``."""
    t = min(max((y - B.HIP_JOINT[1]) / (B.ANKLE_Y - B.HIP_JOINT[1]), 0.0), 1.0)
    return 0.4 + (sil.leg - 0.4) * t


def outline(design: Design, view: int, pose: B.Pose) -> Outline:
    """The garment's parts in one view (0 front, 1 back) and pose."""
    sil = design.silhouette
    return _lower(sil, view, pose) if sil.part == "lower" else _upper(sil, view, pose)


def bounds(shape: Outline) -> tuple[np.ndarray, np.ndarray]:
    """Body-unit bounding box of an outline."""
    pts = np.vstack(shape.body + shape.sleeves + shape.trims)
    return pts.min(axis=0), pts.max(axis=0)


def _graphic(colour: np.ndarray, graphic: Graphic, palette: Palette, raster: Raster) -> None:
    """Draw a print onto the uint8 fabric colour image (readable, so never mirrored)."""
    cx, cy = raster.to_px(graphic.centre)
    width = graphic.width * raster.scale
    shape_colour = tuple(float(c) for c in palette.role(graphic.shape_role))
    text_colour = tuple(float(c) for c in palette.role(graphic.text_role))
    r = width / 2
    if graphic.shape == "circle":
        cv2.circle(colour, (int(cx), int(cy)), max(1, int(r * 0.8)), shape_colour, -1, cv2.LINE_AA)
    elif graphic.shape in ("star", "heart"):
        t = np.linspace(0, 2 * np.pi, 41)[:-1]
        if graphic.shape == "star":
            rad = np.where(np.arange(40) % 8 < 4, 1.0, 0.45) * r * 0.8
            pts = np.stack([cx + rad * np.sin(t), cy - rad * np.cos(t)], 1)
        else:
            pts = np.stack([cx + r * 0.05 * 16 * np.sin(t) ** 3,
                            cy - r * 0.05 * (13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], 1)
        cv2.fillPoly(colour, [np.round(pts * 16).astype(np.int32)], shape_colour, cv2.LINE_AA, 4)
    elif graphic.shape in ("band", "rect"):
        h = r * (0.35 if graphic.shape == "band" else 0.6)
        cv2.rectangle(colour, (int(cx - r), int(cy - h)), (int(cx + r), int(cy + h)), shape_colour, -1, cv2.LINE_AA)
    if graphic.text and width >= 6:
        font = cv2.FONT_HERSHEY_DUPLEX
        (tw, th), _ = cv2.getTextSize(graphic.text, font, 1.0, 2)
        fit = width * (0.62 if graphic.shape in ("circle", "star", "heart") else 0.85)
        scale = fit / max(tw, 1)
        thickness = max(1, int(round(scale * 2.2)))
        (tw, th), _ = cv2.getTextSize(graphic.text, font, scale, thickness)
        cv2.putText(colour, graphic.text, (int(cx - tw / 2), int(cy + th / 2)), font, scale, text_colour, thickness, cv2.LINE_AA)


def _folds(shape_map: np.ndarray, design: Design, shape: Outline, raster: Raster, rng: np.random.Generator) -> None:
    """Soft fold shadows and highlights: vertical drapes on skirts, creases on tops and trousers."""
    sil = design.silhouette
    top, bottom = shape.span
    lo, hi = bounds(shape)
    n = int(rng.integers(3, 8))
    width = max(1.0, 0.07 * raster.scale)
    for _ in range(n):
        x = float(rng.uniform(lo[0] * 0.8, hi[0] * 0.8))
        if sil.part in ("full", "lower") or sil.kind == "coat":
            y0 = float(rng.uniform(max(top, B.WAIST_Y - 0.2), (top + bottom) / 2))
            line = np.array([(x * 0.7, y0), (x + rng.uniform(-0.1, 0.1), (y0 + bottom) / 2), (x * 1.1, bottom)])
        else:
            y0 = float(rng.uniform(top + 0.4, bottom - 0.3))
            line = np.array([(x, y0), (x + rng.uniform(-0.5, 0.5), y0 + rng.uniform(0.15, 0.5))])
        value = float(rng.choice([0.8, 0.86, 1.08]))
        shapes.stroke(shape_map, [line], value, width, raster.origin, raster.scale)


def render_parts(design: Design, view: int, pose: B.Pose, raster: Raster, rng: np.random.Generator,
                 label: int = 2, shape: Outline | None = None, split: bool = True) -> list[Layer]:
    """Draw the garment on ``raster`` as layers with straight RGB and anti-aliased alpha.

    Only the garment's own box of the raster is drawn; the layers carry its offset.

    With ``split`` the sleeves come as a second layer, so a worn garment's
    sleeves can go over the arms and over other garments' bodies (an arm in
    front of the torso); otherwise everything is one layer.
    """
    shape = shape or outline(design, view, pose)
    full = raster
    raster, offset = full.crop(*bounds(shape), margin=0.04)
    xs, ys = raster.grid()
    fabric_x = xs if view == FRONT else -xs
    colour = patterns.fill(design.pattern, design.palette, fabric_x, ys, raster.scale, shape.span)
    trim = tuple(float(c) for c in design.palette.role(design.trim))
    for poly in shape.trims:
        shapes.fill(colour, [poly], trim, raster.origin, raster.scale)
    graphic = design.front if view == FRONT else design.back
    if graphic is not None:
        printed = np.clip(colour, 0, 255).astype(np.uint8)
        _graphic(printed, graphic, design.palette, raster)
        colour = printed.astype(np.float32)
    shade = np.ones(colour.shape[:2], np.float32)
    _folds(shade, design, shape, raster, rng)
    shade = cv2.GaussianBlur(shade, (0, 0), max(0.6, 0.05 * raster.scale))
    seam_px = max(1.0, 0.018 * raster.scale)
    shapes.stroke(shade, shape.seams, 0.72, seam_px, raster.origin, raster.scale)
    shapes.stroke(shade, shape.trims, 0.75, seam_px, raster.origin, raster.scale, closed=True)
    if len(shape.buttons):
        button = tuple(float(c) for c in design.palette.role("accent" if design.trim != "accent" else "second"))
        shapes.dots(colour, shape.buttons, 0.05, button, raster.origin, raster.scale)
        shapes.dots(shade, shape.buttons, 0.05, 0.9, raster.origin, raster.scale)
    shade *= (1.06 - 0.12 * (ys - shape.span[0]) / max(shape.span[1] - shape.span[0], 1e-3)).astype(np.float32)
    colour += rng.normal(0, 2.5, colour.shape[:2]).astype(np.float32)[..., None]
    parts = [shape.body, shape.sleeves] if split else [shape.body + shape.sleeves]
    layers = []
    for polygons in parts:
        if not polygons:
            continue
        alpha = raster.blank()
        shapes.fill(alpha, polygons, 255, raster.origin, raster.scale)
        inside = cv2.distanceTransform((alpha > 0).astype(np.uint8), cv2.DIST_L2, 3)
        edge = 0.8 + 0.2 * np.minimum(inside / max(0.14 * raster.scale, 1.0), 1.0)
        rgb = np.clip(colour * (shade * edge)[..., None], 0, 255).astype(np.uint8)
        layers.append(Layer(rgb, alpha, label, offset))
    return layers


def render(design: Design, view: int, pose: B.Pose, raster: Raster, rng: np.random.Generator,
           label: int = 2, shape: Outline | None = None) -> Layer:
    """Draw the garment on ``raster`` as one layer (a garment lying flat, hanging or held up)."""
    return render_parts(design, view, pose, raster, rng, label, shape, split=False)[0]
