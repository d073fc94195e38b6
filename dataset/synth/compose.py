"""Sprites, layer stacking, and warped compositing that keeps track of which garment is visible where.

A ``Sprite`` is a premultiplied RGBA image plus a label map naming the layer
visible at each pixel (0 empty, 1 body or props, >= 2 garments). A ``Canvas``
composites sprites under a perspective transform, only over the region they
cover, and, when asked, paints their labels into a frame-sized label map.
Boxes then come from the labels after every transform and occlusion, which is
what makes them tight.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

BODY = 1
"""Label of non-garment pixels that hide garments behind them (skin, hair, props)."""


@dataclass(frozen=True)
class Raster:
    """A pixel grid for drawings in body units: pixel (0, 0) is ``origin``, ``scale`` pixels per unit."""

    origin: tuple[float, float]
    scale: float
    width: int
    height: int

    @classmethod
    def around(cls, lo: Sequence[float], hi: Sequence[float], scale: float, margin: float = 0.05) -> "Raster":
        """The smallest grid holding the body-unit box ``lo``..``hi`` plus a margin."""
        x0, y0 = lo[0] - margin, lo[1] - margin
        width = int(np.ceil((hi[0] - lo[0] + 2 * margin) * scale)) + 1
        height = int(np.ceil((hi[1] - lo[1] + 2 * margin) * scale)) + 1
        return cls((float(x0), float(y0)), float(scale), max(width, 2), max(height, 2))

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Body-unit coordinates of every pixel centre, as two ``(height, width)`` float32 arrays."""
        xs = self.origin[0] + (np.arange(self.width, dtype=np.float32) + 0.5) / self.scale
        ys = self.origin[1] + (np.arange(self.height, dtype=np.float32) + 0.5) / self.scale
        return np.broadcast_to(xs[None, :], (self.height, self.width)), np.broadcast_to(ys[:, None], (self.height, self.width))

    def to_px(self, point: Sequence[float]) -> tuple[float, float]:
        return ((point[0] - self.origin[0]) * self.scale, (point[1] - self.origin[1]) * self.scale)

    def blank(self, channels: int = 0, dtype: type = np.uint8) -> np.ndarray:
        shape = (self.height, self.width, channels) if channels else (self.height, self.width)
        return np.zeros(shape, dtype=dtype)

    def crop(self, lo: Sequence[float], hi: Sequence[float], margin: float = 0.05) -> tuple["Raster", tuple[int, int]]:
        """The part of this grid covering body-unit box ``lo``..``hi``, and its pixel offset in this grid.

        Drawing a garment on the crop and pasting it back at the offset gives
        the same pixels as drawing on the whole grid, for a fraction of the work.
        """
        x0 = int(np.clip(np.floor((lo[0] - margin - self.origin[0]) * self.scale), 0, self.width - 1))
        y0 = int(np.clip(np.floor((lo[1] - margin - self.origin[1]) * self.scale), 0, self.height - 1))
        x1 = int(np.clip(np.ceil((hi[0] + margin - self.origin[0]) * self.scale) + 1, x0 + 1, self.width))
        y1 = int(np.clip(np.ceil((hi[1] + margin - self.origin[1]) * self.scale) + 1, y0 + 1, self.height))
        origin = (self.origin[0] + x0 / self.scale, self.origin[1] + y0 / self.scale)
        return Raster(origin, self.scale, x1 - x0, y1 - y0), (x0, y0)


@dataclass
class Layer:
    """One drawn part (a garment, the body): straight RGB and alpha, placed at pixel ``offset`` of a shared grid."""

    rgb: np.ndarray
    alpha: np.ndarray
    label: int
    offset: tuple[int, int] = (0, 0)


@dataclass
class Sprite:
    """A premultiplied RGBA image with per-pixel layer labels, layer areas and anchor points (pixels)."""

    rgba: np.ndarray
    labels: np.ndarray
    areas: dict[int, float] = field(default_factory=dict)
    anchors: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return self.rgba.shape[1], self.rgba.shape[0]


def stack(layers: Sequence[Layer], size: tuple[int, int], anchors: dict[str, tuple[float, float]] | None = None,
          crop: bool = True) -> Sprite:
    """Composite layers back to front into one sprite of ``size`` (width, height), cropped to what is drawn.

    Each layer is blended only over its drawn pixels' bounding box. ``areas``
    records each label's own (unoccluded) area, the union of its layers (a
    sleeve over its own body counts once), so a compositor can later tell how
    much of it is hidden. Labels must be below 32.
    """
    w, h = size
    colour = np.zeros((h, w, 3), np.float32)
    cover = np.zeros((h, w), np.float32)
    labels = np.zeros((h, w), np.uint8)
    owned = np.zeros((h, w), np.uint32)  # bit ``label`` set where that label's own layers are solid
    if any(not 0 <= layer.label < 32 for layer in layers):
        raise ValueError("sprite labels must be in 0..31")
    for layer in layers:
        bx, by, bw, bh = cv2.boundingRect(layer.alpha)
        if bw == 0 or bh == 0:
            continue
        ox, oy = layer.offset
        x0, y0 = ox + bx, oy + by
        x1, y1 = min(x0 + bw, w), min(y0 + bh, h)
        if x1 <= x0 or y1 <= y0:
            continue
        alpha = layer.alpha[by:by + (y1 - y0), bx:bx + (x1 - x0)]
        a = alpha.astype(np.float32)[..., None] * (1.0 / 255.0)
        rgb = layer.rgb[by:by + (y1 - y0), bx:bx + (x1 - x0)].astype(np.float32)
        colour[y0:y1, x0:x1] = rgb * a + colour[y0:y1, x0:x1] * (1.0 - a)
        cover[y0:y1, x0:x1] = a[..., 0] + cover[y0:y1, x0:x1] * (1.0 - a[..., 0])
        solid = alpha >= 128
        labels[y0:y1, x0:x1][solid] = layer.label
        owned[y0:y1, x0:x1][solid] |= np.uint32(1 << layer.label)
    areas = {layer.label: float(np.count_nonzero(owned & np.uint32(1 << layer.label))) for layer in layers}
    rgba = np.dstack([np.clip(colour + 0.5, 0, 255), np.clip(cover * 255.0 + 0.5, 0, 255)]).astype(np.uint8)
    sprite = Sprite(rgba, labels, areas, dict(anchors or {}))
    return crop_sprite(sprite) if crop else sprite


def crop_sprite(sprite: Sprite, margin: int = 2) -> Sprite:
    """Cut a sprite to its drawn pixels (plus a margin) and move its anchors accordingly."""
    ys, xs = np.nonzero(sprite.rgba[..., 3])
    if len(xs) == 0:
        return sprite
    h, w = sprite.labels.shape
    x0, y0 = max(int(xs.min()) - margin, 0), max(int(ys.min()) - margin, 0)
    x1, y1 = min(int(xs.max()) + margin + 1, w), min(int(ys.max()) + margin + 1, h)
    anchors = {k: (v[0] - x0, v[1] - y0) for k, v in sprite.anchors.items()}
    return Sprite(sprite.rgba[y0:y1, x0:x1].copy(), sprite.labels[y0:y1, x0:x1].copy(), dict(sprite.areas), anchors)


class Swayer:
    """Sideways row shifts of one sprite: a cheap non-rigid bend (a swaying body, a swinging hem).

    Row ``r`` moves by ``amount * profile[r]`` pixels. Rows keep their pixels,
    so layer areas do not change. The bend moves slowly, so ``amount`` is
    rounded to ``step`` pixels and the last result is reused until it
    changes; labels are bent only when asked (annotated frames), since nothing
    else looks at them.
    """

    def __init__(self, sprite: Sprite, profile: np.ndarray, step: float = 1.0) -> None:
        self.sprite = sprite
        self.step = step
        h, w = sprite.labels.shape
        self._profile = profile.astype(np.float32)[:, None]
        self._xs = np.arange(w, dtype=np.float32)[None, :]
        self._map_y = np.ascontiguousarray(np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w)))
        self._key: int | None = None
        self._bent: Sprite | None = None
        self._labelled = False

    def __call__(self, amount: float, with_labels: bool) -> Sprite:
        key = int(round(amount / self.step))
        if self._bent is not None and key == self._key and (self._labelled or not with_labels):
            return self._bent
        map_x = np.ascontiguousarray(self._xs - self._profile * (key * self.step))
        rgba = cv2.remap(self.sprite.rgba, map_x, self._map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        labels = (cv2.remap(self.sprite.labels, map_x, self._map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
                  if with_labels else self.sprite.labels)
        self._key, self._labelled = key, with_labels
        self._bent = Sprite(rgba, labels, self.sprite.areas, self.sprite.anchors)
        return self._bent


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 3x3 projective transform to ``(N, 2)`` points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    hom = np.hstack([pts, np.ones((len(pts), 1))]) @ np.asarray(matrix, dtype=np.float64).T
    return hom[:, :2] / hom[:, 2:3]


def polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


class Canvas:
    """A frame being composited, with an optional label map for annotation.

    ``expected`` holds, per global label, the area the garment would cover if
    nothing hid it (inside or outside the frame); ``visible_boxes`` compares
    the visible pixels with it.
    """

    def __init__(self, image: np.ndarray, labels: np.ndarray | None = None) -> None:
        self.image = image
        self.labels = labels
        self.expected: dict[int, float] = {}

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]

    def footprint(self, sprite: Sprite, matrix: np.ndarray) -> tuple[int, int, int, int] | None:
        """The frame region a transformed sprite covers, clipped to the frame, or ``None``."""
        w, h = sprite.size
        corners = apply(matrix, np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64))
        fw, fh = self.size
        x0 = max(int(np.floor(corners[:, 0].min())), 0)
        y0 = max(int(np.floor(corners[:, 1].min())), 0)
        x1 = min(int(np.ceil(corners[:, 0].max())) + 1, fw)
        y1 = min(int(np.ceil(corners[:, 1].max())) + 1, fh)
        if x1 <= x0 or y1 <= y0:
            return None
        return x0, y0, x1, y1

    def paste(self, sprite: Sprite, matrix: np.ndarray, lut: dict[int, int] | None = None) -> tuple[int, int, int, int] | None:
        """Composite ``sprite`` mapped by ``matrix`` (sprite pixels -> frame pixels); returns the region.

        ``lut`` maps the sprite's labels to global ones; labels are painted only
        when the canvas tracks them and a lut is given.
        """
        region = self.footprint(sprite, matrix)
        if region is None:
            return None
        x0, y0, x1, y1 = region
        local = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], dtype=np.float64) @ np.asarray(matrix, np.float64)
        size = (x1 - x0, y1 - y0)
        warped = cv2.warpPerspective(sprite.rgba, local, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        blend_into(self.image[y0:y1, x0:x1], warped)
        if self.labels is not None and lut is not None:
            self._paint_labels(sprite, local, size, warped[..., 3], region, lut, matrix)
        return region

    def _paint_labels(self, sprite: Sprite, local: np.ndarray, size: tuple[int, int], alpha: np.ndarray,
                      region: tuple[int, int, int, int], lut: dict[int, int], matrix: np.ndarray) -> None:
        assert self.labels is not None
        x0, y0, x1, y1 = region
        table = np.zeros(256, np.uint8)
        for src, dst in lut.items():
            table[src] = dst
        warped = cv2.warpPerspective(sprite.labels, local, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
        mapped = table[warped]
        solid = (alpha >= 128) & (mapped > 0)
        self.labels[y0:y1, x0:x1][solid] = mapped[solid]
        w, h = sprite.size
        ratio = polygon_area(apply(matrix, np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64))) / float(w * h)
        for src, dst in lut.items():
            if dst > BODY and src in sprite.areas:
                self.expected[dst] = self.expected.get(dst, 0.0) + sprite.areas[src] * ratio

    def cover(self, mask: np.ndarray, colour_rgba: np.ndarray, at: tuple[int, int]) -> None:
        """Composite an unwarped premultiplied RGBA patch with its top-left corner at ``at`` (x, y).

        Pixels in ``mask`` become ``BODY`` in the label map: props in front hide garments.
        """
        x, y = at
        h, w = colour_rgba.shape[:2]
        fw, fh = self.size
        xa, ya, xb, yb = max(x, 0), max(y, 0), min(x + w, fw), min(y + h, fh)
        if xb <= xa or yb <= ya:
            return
        patch = colour_rgba[ya - y:yb - y, xa - x:xb - x]
        blend_into(self.image[ya:yb, xa:xb], patch)
        if self.labels is not None:
            self.labels[ya:yb, xa:xb][mask[ya - y:yb - y, xa - x:xb - x]] = BODY

    def visible_boxes(self, ids: Iterable[int], min_visible: float, min_side: int) -> dict[int, tuple[int, int, int, int]]:
        """Tight boxes ``[x1, y1, x2, y2)`` of the garments that are visible enough.

        A garment is kept when its visible pixels are at least ``min_visible``
        of its unoccluded area and its box is at least ``min_side`` pixels on
        each side; the end coordinates are exclusive, so the box slices the
        garment out of the image exactly.
        """
        assert self.labels is not None
        boxes: dict[int, tuple[int, int, int, int]] = {}
        for gid in ids:
            mask = self.labels == gid
            count = int(np.count_nonzero(mask))
            expected = self.expected.get(gid, 0.0)
            if count == 0 or expected <= 0 or count < min_visible * expected:
                continue
            cols = np.flatnonzero(mask.any(axis=0))
            rows = np.flatnonzero(mask.any(axis=1))
            box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
            if box[2] - box[0] >= min_side and box[3] - box[1] >= min_side:
                boxes[gid] = box
        return boxes


def blend_into(dst: np.ndarray, premultiplied: np.ndarray) -> None:
    """``dst = fg + dst * (1 - alpha)`` in place, for a premultiplied RGBA ``fg`` of the same size.

    Channels are split with ``cvtColor``: handing OpenCV strided channel views
    instead costs an order of magnitude more.
    """
    inv = cv2.cvtColor(255 - premultiplied[..., 3], cv2.COLOR_GRAY2RGB)
    scaled = cv2.multiply(dst, inv, scale=1.0 / 255.0)
    cv2.add(scaled, cv2.cvtColor(premultiplied, cv2.COLOR_RGBA2RGB), dst=dst)
