"""A simple human figure that wears or holds garments: the live-stream presenter and the shop model.

The figure is drawn in body units from a ``Pose``; garments are drawn on the
same raster so they fit. Front and back views differ (face or hair), and long
hair falls over the garment's back, a natural occluder.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from dataset.synth import body as B
from dataset.synth import garments as G
from dataset.synth import shapes
from dataset.synth.colours import RGB, hair_colour, jitter, skin_tone
from dataset.synth.compose import BODY, Layer, Raster, Sprite, stack

HAIR_STYLES = ("long", "long", "bob", "bun", "ponytail")


@dataclass(frozen=True)
class Person:
    """How a presenter or model looks."""

    skin: RGB
    hair: RGB
    hair_style: str
    hair_length: float
    shoes: RGB
    lips: RGB


def random_person(rng: np.random.Generator) -> Person:
    shoes = jitter([(20, 20, 22), (235, 235, 230), (196, 170, 140), (150, 30, 40)][int(rng.integers(4))], rng, 6)
    lips = jitter((196, 90, 100), rng, 12)
    return Person(skin_tone(rng), hair_colour(rng), str(rng.choice(HAIR_STYLES)), float(rng.uniform(2.2, 3.0)), shoes, lips)


def figure_raster(scale: float) -> Raster:
    """A raster wide enough for any pose (arms out, elbows bent) and tall enough for the whole body."""
    return Raster.around((-2.3, -0.25), (2.3, B.BODY_HEIGHT + 0.05), scale, margin=0.0)


def _layer(raster: Raster, colour: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    rgb = raster.blank(3)
    rgb[:] = colour
    return rgb, raster.blank()


def _shaded(rgb: np.ndarray, alpha: np.ndarray, raster: Raster) -> np.ndarray:
    """Round the look of skin and hair with darker edges."""
    inside = cv2.distanceTransform((alpha > 0).astype(np.uint8), cv2.DIST_L2, 3)
    shade = 0.82 + 0.18 * np.minimum(inside / max(0.1 * raster.scale, 1.0), 1.0)
    return np.clip(rgb.astype(np.float32) * shade[..., None], 0, 255).astype(np.uint8)


def _hair_back(person: Person) -> list[np.ndarray]:
    """Hair that hangs behind the shoulders (front view) or over the back (back view)."""
    if person.hair_style == "long":
        bottom = person.hair_length
        return [shapes.chaikin(np.array([(-0.42, 0.3), (-0.5, 1.2), (-0.62, bottom - 0.3), (-0.4, bottom),
                                         (0.0, bottom + 0.1), (0.4, bottom), (0.62, bottom - 0.3), (0.5, 1.2),
                                         (0.42, 0.3), (0.0, -0.05)]), 2)]
    if person.hair_style == "ponytail":
        return [shapes.thick_polyline(np.array([(0.0, 0.3), (0.04, 1.0), (0.0, 1.9)]), [0.16, 0.14, 0.05])]
    if person.hair_style == "bob":
        return [shapes.chaikin(np.array([(-0.44, 0.3), (-0.48, 1.05), (0.0, 1.12), (0.48, 1.05), (0.44, 0.3), (0.0, -0.05)]), 2)]
    return []


def body_layers(person: Person, pose: B.Pose, view: int, raster: Raster) -> tuple[list[Layer], Layer, list[Layer]]:
    """The figure as layers: under the garments (hair, torso, legs), the arms (over garment
    bodies, under sleeves), and over everything (head, hair, hands)."""
    under: list[Layer] = []
    if view == G.FRONT and person.hair_style in ("long", "bob"):
        rgb, a = _layer(raster, person.hair)
        shapes.fill(a, _hair_back(person), 255, raster.origin, raster.scale)
        under.append(Layer(_shaded(rgb, a, raster), a, BODY))
    rgb, a = _layer(raster, person.skin)
    polys = [shapes.chaikin(np.array([(0.14, 1.05), (0.16, 1.3), (0.95, 1.46), (0.82, 2.05), (0.6, 3.0), (0.82, 3.7),
                                      (0.74, 4.1), (-0.74, 4.1), (-0.82, 3.7), (-0.6, 3.0), (-0.82, 2.05),
                                      (-0.95, 1.46), (-0.16, 1.3), (-0.14, 1.05)]), 1)]
    for side in (1, -1):
        polys.append(shapes.thick_polyline(pose.leg(side), [0.27, 0.17, 0.1]))
    shapes.fill(a, polys, 255, raster.origin, raster.scale)
    shoes = [shapes.ellipse((side * 0.04 + pose.leg(side)[-1][0], B.FOOT_Y - 0.12), 0.2, 0.12) for side in (1, -1)]
    shapes.fill(rgb, shoes, person.shoes, raster.origin, raster.scale)
    shapes.fill(a, shoes, 255, raster.origin, raster.scale)
    under.append(Layer(_shaded(rgb, a, raster), a, BODY))
    rgb, a = _layer(raster, person.skin)
    arms = []
    for side in (1, -1):
        arm = pose.arm(side)
        arms += [shapes.thick_polyline(arm, [0.18, 0.14, 0.1]), shapes.arc(arm[0], (0.19, 0.19), 0, 360, 12),
                 shapes.arc(arm[1], (0.14, 0.14), 0, 360, 12)]
    shapes.fill(a, arms, 255, raster.origin, raster.scale)
    return under, Layer(_shaded(rgb, a, raster), a, BODY), _head_layers(person, pose, view, raster)


def _hands(pose: B.Pose) -> list[np.ndarray]:
    hands = []
    for side in (1, -1):
        arm = pose.arm(side)
        d = arm[-1] - arm[-2]
        d /= max(np.linalg.norm(d), 1e-9)
        centre = arm[-1] + d * 0.16
        angle = float(np.degrees(np.arctan2(d[1], d[0])))
        hands.append(shapes.ellipse(centre, 0.2, 0.11, angle))
    return hands


def _head_layers(person: Person, pose: B.Pose, view: int, raster: Raster) -> list[Layer]:
    """Neck, head, face or back of the head, hair on top, and the hands (over the sleeves)."""
    layers = []
    rgb, a = _layer(raster, person.skin)
    shapes.fill(a, [np.array([(-0.15, 0.8), (0.15, 0.8), (0.16, B.NECK_Y - 0.02), (-0.16, B.NECK_Y - 0.02)]),
                    shapes.ellipse(np.array([0.0, 0.52]), 0.36, 0.5, 0.0)] + _hands(pose), 255, raster.origin, raster.scale)
    if view == G.FRONT:
        dark = tuple(int(c * 0.35) for c in person.hair)
        for side in (1, -1):
            shapes.fill(rgb, [shapes.ellipse(np.array([side * 0.14, 0.5]), 0.055, 0.028, 0.0)], dark, raster.origin, raster.scale)
            shapes.stroke(rgb, [np.array([(side * 0.08, 0.4), (side * 0.2, 0.39)])], dark, max(1, 0.02 * raster.scale),
                          raster.origin, raster.scale)
        shapes.fill(rgb, [shapes.ellipse(np.array([0.0, 0.8]), 0.09, 0.032, 0.0)], person.lips, raster.origin, raster.scale)
        shapes.stroke(rgb, [np.array([(0.0, 0.55), (0.03, 0.67), (0.0, 0.69)])], tuple(int(c * 0.8) for c in person.skin),
                      max(1, 0.015 * raster.scale), raster.origin, raster.scale)
    layers.append(Layer(_shaded(rgb, a, raster), a, BODY))
    rgb, a = _layer(raster, person.hair)
    if view == G.FRONT:
        cap = np.vstack([shapes.arc((0.0, 0.5), (0.41, 0.57), 180, 360, 16),
                         np.array([(0.4, 0.55), (0.3, 0.3), (0.05, 0.22), (-0.2, 0.3), (-0.38, 0.6)])])
        polys = [shapes.chaikin(cap, 1)]
        if person.hair_style == "long":
            polys += [shapes.chaikin(np.array([(s * 0.36, 0.4), (s * 0.46, 0.5), (s * 0.5, 1.6), (s * 0.38, 1.9),
                                               (s * 0.33, 0.9)]), 1) for s in (1, -1)]
    else:
        polys = [shapes.ellipse(np.array([0.0, 0.5]), 0.41, 0.55, 0.0)] + _hair_back(person)
    if person.hair_style == "bun":
        polys.append(shapes.ellipse(np.array([0.0, -0.02]), 0.22, 0.18, 0.0))
    shapes.fill(a, polys, 255, raster.origin, raster.scale)
    layers.append(Layer(_shaded(rgb, a, raster), a, BODY))
    return layers


def dressed(person: Person, pose: B.Pose, view: int, worn: Sequence[tuple[G.Design, int]], scale: float,
            rng: np.random.Generator, window: Raster | None = None) -> Sprite:
    """The figure wearing ``worn`` garments (design, label), layered lower, full, upper, outer.

    Without ``window`` the whole figure is drawn and the sprite cropped to it;
    with one, exactly that window (body units) is drawn, uncropped, which is
    how a shop close-up avoids drawing a huge figure. Anchor ``neck`` is the
    body point (0, NECK_Y) in sprite pixels.
    """
    raster = window or figure_raster(scale)
    under, arms, over = body_layers(person, pose, view, raster)
    order = {"lower": 0, "full": 1, "upper": 2, "outer": 3}
    garments = sorted(worn, key=lambda item: order[item[0].silhouette.part])
    parts = [G.render_parts(design, view, pose, raster, rng, label) for design, label in garments]
    layers = under + [p[0] for p in parts] + [arms] + [layer for p in parts for layer in p[1:]] + over
    return stack(layers, (raster.width, raster.height), {"neck": raster.to_px((0.0, B.NECK_Y))}, crop=window is None)
