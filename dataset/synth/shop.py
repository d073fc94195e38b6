"""Shop images of an item: the garment alone (flat, maybe on a hanger) or worn by a model, in various framings.

Boxes come from the label map after every transform (scale, rotation,
cropping by the image border, other garments in front), so they are tight
around the visible garment. The item's own garment is always annotated when
any of it shows; other garments (instance id 0) only when visible enough.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dataset.annotations import image_annotation_dict
from dataset.images import write_image
from dataset.jsonio import write_json_atomic
from dataset.records import Instance, ShopImage
from dataset.synth import body as B
from dataset.synth import figure, overlays, props, scenes
from dataset.synth import garments as G
from dataset.synth.compose import BODY, Canvas, Raster, Sprite, stack
from dataset.synth.config import SynthConfig

TARGET = 2
"""Label of the item's own garment in a shop image's label map."""


@dataclass
class ShopRender:
    """A rendered shop image, its annotations and the visible mask of the item's garment."""

    image: np.ndarray
    instances: tuple[Instance, ...]
    target_mask: np.ndarray
    display: int
    viewpoint: int


def _rotation(centre: tuple[float, float], angle: float, scale: float, offset: tuple[float, float]) -> np.ndarray:
    """A 3x3 matrix rotating and scaling about ``centre`` (sprite pixels), then moving it to ``offset`` (image pixels)."""
    m = cv2.getRotationMatrix2D(centre, angle, scale)
    m[:, 2] += np.asarray(offset) - np.asarray(centre)
    return np.vstack([m, [0, 0, 1]])


def flat_sprite(design: G.Design, view: int, scale: float, rng: np.random.Generator, label: int,
                with_hanger: bool = False) -> Sprite:
    """A garment lying flat or hanging, cropped to itself; anchor ``top`` is its top centre."""
    pose = B.flat_pose(float(rng.uniform(12, 50)) if design.silhouette.sleeve > 1.0 else float(rng.uniform(10, 35)))
    shape = G.outline(design, view, pose)
    lo, hi = G.bounds(shape)
    top = (0.0, float(design.silhouette.top_y))
    if with_hanger:
        lo = np.minimum(lo, (-0.3, top[1] - props.HANGER_RISE - 0.1))
    raster = Raster.around(lo, hi, scale, margin=0.06)
    layers = [G.render(design, view, pose, raster, rng, label, shape)]
    if with_hanger:
        half = design.silhouette.shoulder * 0.8 if design.silhouette.part != "lower" else design.silhouette.waist
        layers.insert(0, props.hanger(raster, top, half, (120, 100, 80) if rng.random() < 0.5 else (40, 40, 40)))
    return stack(layers, (raster.width, raster.height), {"top": raster.to_px(top), "centre": raster.to_px(((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2))})


def _extent(design: G.Design, view: int) -> float:
    """The larger side (units) of a garment's flat outline; sets the render scale for a wanted pixel size."""
    lo, hi = G.bounds(G.outline(design, view, B.flat_pose(30)))
    return float(max(hi - lo))


def _shadow(canvas: Canvas, sprite: Sprite, matrix: np.ndarray, strength: float) -> None:
    """A soft drop shadow under a flat garment: darkens the background only (labels unchanged)."""
    size = canvas.size
    alpha = cv2.warpPerspective(sprite.rgba[..., 3], matrix, size).astype(np.float32) / 255.0
    shift = max(2, size[0] // 80)
    alpha = np.roll(alpha, (shift, shift), axis=(0, 1))
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(1.0, size[0] / 90))
    canvas.image[:] = (canvas.image * (1.0 - strength * alpha[..., None])).astype(np.uint8)


def _flat(canvas: Canvas, design: G.Design, view: int, closeup: bool, rng: np.random.Generator,
          placed: dict[int, G.Shown], instance_id: int) -> None:
    size = canvas.size[0]
    fill = rng.uniform(1.3, 1.8) if closeup else rng.uniform(0.55, 0.9)
    scale = fill * size / _extent(design, view)
    sprite = flat_sprite(design, view, scale, rng, TARGET, with_hanger=rng.random() < 0.3)
    angle = float(rng.uniform(-12, 12)) if rng.random() < 0.5 else 0.0
    jitter = rng.uniform(-0.08, 0.08, 2) * size
    matrix = _rotation(sprite.anchors["centre"], angle, 1.0, (size / 2 + jitter[0], size / 2 + jitter[1]))
    extras = _extras(design, size, rng) if not closeup and rng.random() < 0.3 else []
    for k, (_, other_sprite, other_matrix, in_front) in enumerate(extras):
        if not in_front:
            canvas.paste(other_sprite, other_matrix, {BODY: BODY, TARGET + 1 + k: TARGET + 1 + k})
    if rng.random() < 0.5:
        _shadow(canvas, sprite, matrix, float(rng.uniform(0.15, 0.35)))
    canvas.paste(sprite, matrix, {BODY: BODY, TARGET: TARGET})
    placed[TARGET] = G.Shown(design, instance_id, display=0, viewpoint=view)
    for k, (other, other_sprite, other_matrix, in_front) in enumerate(extras):
        if in_front:
            canvas.paste(other_sprite, other_matrix, {BODY: BODY, TARGET + 1 + k: TARGET + 1 + k})
        placed[TARGET + 1 + k] = G.Shown(other, 0, display=0, viewpoint=G.FRONT)


def _extras(design: G.Design, size: int, rng: np.random.Generator) -> list[tuple[G.Design, Sprite, np.ndarray, bool]]:
    """One or two other garments beside the item (a matching skirt, a folded top), mostly behind it."""
    out = []
    for k in range(int(rng.integers(1, 3))):
        other = G.random_design(rng)
        scale = rng.uniform(0.35, 0.55) * size / _extent(other, G.FRONT)
        sprite = flat_sprite(other, G.FRONT, scale, rng, TARGET + 1 + k)
        corner = (rng.choice([0.12, 0.88]) * size, rng.choice([0.15, 0.85]) * size)
        matrix = _rotation(sprite.anchors["centre"], float(rng.uniform(-25, 25)), 1.0, corner)
        out.append((other, sprite, matrix, bool(rng.random() < 0.25)))
    return out


def _outfit_for(design: G.Design, rng: np.random.Generator) -> list[G.Design]:
    """Garments a model wears with the item so the look is complete (annotated as other garments)."""
    part = design.silhouette.part
    if part == "upper":
        return [G.random_design(rng, "lower")]
    if part == "lower":
        return [G.tucked(G.random_design(rng, "upper"))]
    if part == "outer":
        return [G.random_design(rng, "upper"), G.random_design(rng, "lower")]
    return []


def _worn(canvas: Canvas, design: G.Design, view: int, closeup: bool, rng: np.random.Generator,
          placed: dict[int, G.Shown], instance_id: int) -> None:
    size = canvas.size[0]
    person = figure.random_person(rng)
    pose = B.hip_pose(rng) if rng.random() < 0.4 else B.relaxed_pose(rng)
    others = _outfit_for(design, rng)
    worn = [(design, TARGET)] + [(d, TARGET + 1 + k) for k, d in enumerate(others)]
    if rng.random() < 0.35 and not closeup:
        scale = rng.uniform(0.82, 0.95) * size / B.BODY_HEIGHT
        centre = (float(rng.uniform(-0.3, 0.3)), B.BODY_HEIGHT / 2)
    else:
        lo, hi = G.bounds(G.outline(design, view, pose))
        fill = rng.uniform(1.25, 1.6) if closeup else rng.uniform(0.6, 0.9)
        scale = fill * size / float(max(hi - lo))
        centre = (float((lo[0] + hi[0]) / 2 + rng.uniform(-0.15, 0.15)), float((lo[1] + hi[1]) / 2 + rng.uniform(-0.2, 0.2)))
    half = size / (2 * scale)
    window = Raster((centre[0] - half, centre[1] - half), scale, size, size)
    sprite = figure.dressed(person, pose, view, worn, scale, rng, window)
    canvas.paste(sprite, np.eye(3), {label: label for label in [BODY] + [w[1] for w in worn]})
    placed[TARGET] = G.Shown(design, instance_id, display=1, viewpoint=view)
    for other, label in worn[1:]:
        placed[label] = G.Shown(other, 0, display=1, viewpoint=view)


def _relight(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A different exposure and white balance per photo, within what keeps colour variants apart."""
    level = 1.0 + rng.uniform(-0.08, 0.08) * strength
    warmth = rng.uniform(-0.04, 0.04) * strength
    gains = np.array([level * (1 + warmth), level, level * (1 - warmth)], np.float32)
    lut = np.clip(np.arange(256, dtype=np.float32)[:, None] * gains[None, :] + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut.reshape(256, 1, 3))


def choose_view(index: int, rng: np.random.Generator) -> int:
    """Image 0 shows the front, image 1 usually the back; the rest mostly the front."""
    if index == 0:
        return G.FRONT
    if index == 1:
        return G.BACK if rng.random() < 0.8 else G.FRONT
    return G.FRONT if rng.random() < 0.65 else G.BACK


def render_shop_image(design: G.Design, instance_id: int, index: int, rng: np.random.Generator,
                      config: SynthConfig) -> ShopRender:
    """One shop image of an item: the image, its annotations and the item's visible mask."""
    size = config.shop_size
    backdrop, _ = scenes.shop_backdrop(rng, size)
    canvas = Canvas(backdrop.copy(), np.zeros((size, size), np.uint8))
    view = choose_view(index, rng)
    closeup = index > 0 and rng.random() < 0.12
    placed: dict[int, G.Shown] = {}
    if rng.random() < 0.45:
        _worn(canvas, design, view, closeup, rng, placed, instance_id)
    else:
        _flat(canvas, design, view, closeup, rng, placed, instance_id)
    min_side = max(4, size // 40)
    boxes = canvas.visible_boxes([TARGET], 0.0, min_side)
    boxes.update(canvas.visible_boxes([k for k in placed if k != TARGET], config.min_visible, min_side))
    instances = tuple(shown.instance(boxes[k]) for k, shown in sorted(placed.items()) if k in boxes)
    image = _relight(canvas.image, rng, config.lighting)
    overlays.shop_captions(image, rng, config.overlays)
    assert canvas.labels is not None
    return ShopRender(image, instances, canvas.labels == TARGET, placed[TARGET].display, view)


def write_item(root: Path, item_id: str, design: G.Design, instance_id: int, rng: np.random.Generator,
               config: SynthConfig) -> list[dict]:
    """Render and write all shop images of one item and their annotation files; returns a summary per image."""
    count = int(rng.integers(config.shop_images_min, config.shop_images_max + 1))
    summary = []
    for n in range(count):
        render = render_shop_image(design, instance_id, n, rng, config)
        path = write_image(root / "image" / item_id / f"{n}.jpg", render.image, config.jpeg_quality)
        record = ShopImage(item_id, f"{n}.jpg", path, instances=render.instances, width=config.shop_size,
                           height=config.shop_size)
        write_json_atomic(root / "image_annotation" / item_id / f"{n}.json", image_annotation_dict(record), indent=1)
        summary.append({"img_name": f"{n}.jpg", "display": render.display, "viewpoint": render.viewpoint,
                        "boxes": len(render.instances)})
    return summary
