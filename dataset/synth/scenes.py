"""Backgrounds: live-stream rooms (wall, floor, furniture, a clothes rail) and shop-photo backdrops.

Rooms are drawn once per clip at frame size; garments hung in them are the
clip's background distractors (annotated with instance id 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dataset.synth import patterns
from dataset.synth.colours import RGB, Palette, family_colour, jitter

WALLS = ("plain", "curtain", "wallpaper", "panels", "brand")
FLOORS = ("wood", "tiles", "carpet")


@dataclass
class Room:
    """A rendered room and where things can be hung in it (pixels)."""

    image: np.ndarray
    rail_y: int
    rail_span: tuple[int, int]


def _light(rng: np.random.Generator) -> RGB:
    """Walls in streaming rooms are mostly light and low-saturated."""
    base = np.array(family_colour(rng), float)
    return tuple(int(v) for v in np.clip(0.35 * base + 0.65 * rng.uniform(200, 245), 0, 255))  # type: ignore[return-value]


def _vertical_gradient(height: int, width: int, top: RGB, bottom: RGB) -> np.ndarray:
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    return np.broadcast_to(np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t,
                           (height, width, 3)).copy()


def _wall(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, str, RGB]:
    """The wall as float32 RGB, its style and its colour."""
    style = str(rng.choice(WALLS))
    colour = _light(rng)
    wall = _vertical_gradient(height, width, jitter(colour, rng, 6), tuple(int(c * 0.9) for c in colour))  # type: ignore[arg-type]
    xs = np.arange(width, dtype=np.float32)
    if style == "curtain":
        period = width / rng.uniform(8, 16)
        folds = 0.82 + 0.18 * (0.5 + 0.5 * np.sin(2 * np.pi * xs / period + 0.6 * np.sin(xs / period * 0.7)))
        wall *= folds[None, :, None]
    elif style == "wallpaper":
        pattern = patterns.Pattern(str(rng.choice(["stripes", "dots", "floral", "checks"])), float(rng.uniform(0.5, 1.2)),
                                   0.0, (("base", 1.0), ("second", 0.6)), 0.25, int(rng.integers(1 << 30)))
        soft = tuple(int(c * 0.93) for c in colour)
        palette = Palette(colour, soft, soft, soft)  # type: ignore[arg-type]
        unit = width / 6.0
        gx, gy = np.meshgrid(xs / unit, np.arange(height, dtype=np.float32) / unit)
        wall = patterns.fill(pattern, palette, gx, gy, unit, (0.0, height / unit)) * (wall / np.asarray(colour, np.float32).clip(1))
    elif style == "panels":
        step = int(width / rng.uniform(3, 6))
        for x in range(int(rng.integers(step)), width, max(step, 8)):
            cv2.line(wall, (x, 0), (x, height), tuple(float(c * 0.85) for c in colour), max(1, width // 270))
    return wall, style, colour


def _brand(rng: np.random.Generator, image: np.ndarray, colour: RGB) -> None:
    """Big shop-name letters on the wall, as many streaming rooms have."""
    height, width = image.shape[:2]
    text = "".join(rng.choice(list("ABDEKLMNORSTVXY"), size=int(rng.integers(3, 6))))
    thickness = max(1, width // 90)
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_TRIPLEX, 1.0, thickness)
    scale = width * rng.uniform(0.5, 0.85) / max(tw, 1)
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_TRIPLEX, scale, thickness)
    ink = tuple(float(c) * 0.3 for c in colour)
    org = (int((width - tw) / 2 + rng.uniform(-0.1, 0.1) * width), int(height * rng.uniform(0.15, 0.28)))
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_TRIPLEX, scale, ink, thickness, cv2.LINE_AA)


def _floor(rng: np.random.Generator, width: int, height: int, floor_y: int, image: np.ndarray) -> None:
    style = str(rng.choice(FLOORS))
    colour = np.array(jitter([(150, 110, 75), (190, 170, 140), (120, 120, 124), (210, 205, 198)][int(rng.integers(4))], rng, 10), np.float32)
    depth = height - floor_y
    image[floor_y:] = _vertical_gradient(depth, width, tuple(int(c * 0.8) for c in colour), tuple(int(c) for c in colour))  # type: ignore[arg-type]
    ink = tuple(float(c * 0.8) for c in colour)
    thin = max(1, width // 400)
    if style == "wood":
        y, gap = floor_y, max(3, depth // 12)
        while y < height:
            cv2.line(image, (0, y), (width, y), ink, thin)
            y += gap
            gap = int(gap * 1.25) + 1
    elif style == "tiles":
        for k in range(-8, 9):
            x_far = width / 2 + k * width / 10
            x_near = width / 2 + k * width / 4
            cv2.line(image, (int(x_far), floor_y), (int(x_near), height), ink, thin, cv2.LINE_AA)
        y, gap = floor_y, max(3, depth // 10)
        while y < height:
            cv2.line(image, (0, y), (width, y), ink, thin)
            y += gap
            gap = int(gap * 1.4) + 1
    cv2.line(image, (0, floor_y), (width, floor_y), tuple(float(c * 0.6) for c in colour), max(2, width // 150))


def _props(rng: np.random.Generator, image: np.ndarray, floor_y: int) -> None:
    """Picture frames, a plant and a stool: the furniture of a streaming room."""
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(0, 3))):
        w, h = int(width * rng.uniform(0.12, 0.25)), int(width * rng.uniform(0.14, 0.3))
        x, y = int(rng.uniform(0, width - w)), int(rng.uniform(height * 0.1, floor_y * 0.6))
        frame = tuple(float(c) for c in jitter((40, 35, 30) if rng.random() < 0.5 else (200, 180, 140), rng, 10))
        cv2.rectangle(image, (x, y), (x + w, y + h), frame, -1)
        inner = tuple(float(c) for c in family_colour(rng))
        m = max(2, w // 10)
        cv2.rectangle(image, (x + m, y + m), (x + w - m, y + h - m), inner, -1)
        cv2.circle(image, (x + w // 2, y + h // 2), max(2, w // 5), tuple(float(c) for c in family_colour(rng)), -1, cv2.LINE_AA)
    if rng.random() < 0.6:
        x = int(rng.uniform(0.05, 0.95) * width)
        pot_w, pot_h = int(width * 0.08), int(width * 0.09)
        base_y = floor_y + int((height - floor_y) * rng.uniform(0.1, 0.4))
        leaf = np.array(jitter((50, 110, 60), rng, 12), float)
        for k in range(14):
            angle = rng.uniform(-2.6, -0.5)
            length = width * rng.uniform(0.08, 0.2)
            tip = (int(x + np.cos(angle) * length), int(base_y - pot_h + np.sin(angle) * length))
            cv2.ellipse(image, ((x + tip[0]) // 2, (base_y - pot_h + tip[1]) // 2), (int(length / 2), max(2, int(length / 7))),
                        float(np.degrees(angle)), 0, 360, tuple(float(c) for c in leaf * rng.uniform(0.7, 1.2)), -1, cv2.LINE_AA)
        cv2.rectangle(image, (x - pot_w // 2, base_y - pot_h), (x + pot_w // 2, base_y), tuple(float(c) for c in family_colour(rng)), -1)
    if rng.random() < 0.5:
        x = int(rng.uniform(0.1, 0.9) * width)
        seat_y = floor_y - int(height * rng.uniform(0.0, 0.05))
        colour = tuple(float(c) for c in jitter((190, 160, 110), rng, 20))
        for dx in (-1, 1):
            cv2.line(image, (x + dx * width // 20, seat_y), (x + dx * width // 14, seat_y + height // 8), colour, max(2, width // 150), cv2.LINE_AA)
        cv2.ellipse(image, (x, seat_y), (width // 12, max(2, width // 60)), 0, 0, 360, colour, -1, cv2.LINE_AA)


def room(rng: np.random.Generator, width: int, height: int) -> Room:
    """A streaming room: wall, floor, props and a clothes rail high on one side."""
    image, style, colour = _wall(rng, width, height)
    floor_y = int(height * rng.uniform(0.66, 0.8))
    _floor(rng, width, height, floor_y, image)
    image = np.clip(image, 0, 255).astype(np.uint8)
    if style == "brand":
        _brand(rng, image, colour)
    _props(rng, image, floor_y)
    rail_y = int(height * rng.uniform(0.16, 0.28))
    span = (int(width * rng.uniform(-0.05, 0.05)), int(width * rng.uniform(0.95, 1.05)))
    cv2.line(image, (span[0], rail_y), (span[1], rail_y), (150, 150, 155), max(2, width // 180), cv2.LINE_AA)
    return Room(image, rail_y, span)


def vignette(width: int, height: int, strength: float) -> np.ndarray:
    """A multiplicative darkening towards the corners, as phone cameras and studio lights give."""
    y, x = np.ogrid[-1:1:complex(0, height), -1:1:complex(0, width)]
    return (1.0 - strength * np.clip(x * x + y * y - 0.3, 0, None) / 1.7).astype(np.float32)


def shop_backdrop(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """A shop-photo background: plain, studio gradient, a room corner, fabric, or blurred outdoor light."""
    style = str(rng.choice(["plain", "plain", "studio", "room", "fabric", "bokeh"]))
    if style == "plain":
        colour = np.array(_light(rng), np.float32) if rng.random() < 0.5 else np.full(3, rng.uniform(235, 252), np.float32)
        image = np.broadcast_to(colour, (size, size, 3)).copy()
    elif style == "studio":
        centre = np.array(_light(rng), np.float32)
        image = np.broadcast_to(centre, (size, size, 3)) * vignette(size, size, 0.5)[..., None]
    elif style == "room":
        return np.ascontiguousarray(room(rng, size, size).image), style
    elif style == "fabric":
        colour = _light(rng)
        pattern = patterns.random_pattern(rng)
        palette = Palette(colour, jitter(colour, rng, 18), jitter(colour, rng, 18), jitter(colour, rng, 18))
        unit = size / 8.0
        gx, gy = np.meshgrid(np.arange(size, dtype=np.float32) / unit, np.arange(size, dtype=np.float32) / unit)
        image = patterns.fill(pattern, palette, gx, gy, unit, (0.0, 8.0))
    else:
        image = np.broadcast_to(np.array(_light(rng), np.float32) * 0.9, (size, size, 3)).copy()
        for _ in range(25):
            c = tuple(float(v) for v in np.clip(np.array(family_colour(rng)) * 0.5 + 120, 0, 255))
            cv2.circle(image, (int(rng.uniform(0, size)), int(rng.uniform(0, size))), int(size * rng.uniform(0.03, 0.12)), c, -1)
        image = cv2.GaussianBlur(image, (0, 0), size / 40)
    return np.clip(image, 0, 255).astype(np.uint8), style


def foreground(rng: np.random.Generator, width: int, height: int) -> list[tuple[np.ndarray, np.ndarray, tuple[int, int]]]:
    """Things between the camera and the presenter: a counter at the bottom, a phone stand with a ring light.

    Returns ``(mask, premultiplied RGBA, (x, y))`` patches; they hide garments,
    so boxes shrink or vanish behind them.
    """
    out = []
    if rng.random() < 0.25:
        top = int(height * rng.uniform(0.8, 0.9))
        patch = np.zeros((height - top, width, 4), np.uint8)
        colour = np.array(jitter((170, 130, 90) if rng.random() < 0.5 else (235, 235, 235), rng, 12), np.float32)
        shade = np.linspace(1.0, 0.75, height - top, dtype=np.float32)[:, None, None]
        patch[..., :3] = np.clip(colour * shade, 0, 255).astype(np.uint8)
        patch[: max(2, height // 200), :, :3] = np.clip(colour * 1.15, 0, 255).astype(np.uint8)
        patch[..., 3] = 255
        out.append((patch[..., 3] > 0, patch, (0, top)))
    if rng.random() < 0.25:
        x = int(width * rng.uniform(0.08, 0.92))
        top = int(height * rng.uniform(0.3, 0.5))
        ring = int(width * rng.uniform(0.06, 0.1))
        y0 = top - ring - 2
        rgb = np.zeros((height - y0, 2 * ring + 4, 3), np.uint8)
        alpha = np.zeros(rgb.shape[:2], np.uint8)
        cx, cy = ring + 2, ring + 2
        for img, value in ((rgb, (60.0, 60.0, 64.0)), (alpha, (255.0,))):
            cv2.line(img, (cx, cy), (cx, img.shape[0]), value, max(2, width // 110))
        if rng.random() < 0.5:
            cv2.circle(rgb, (cx, cy), ring, (250.0, 250.0, 240.0), max(2, width // 90), cv2.LINE_AA)
            cv2.circle(alpha, (cx, cy), ring, (255.0,), max(2, width // 90), cv2.LINE_AA)
        ph, pw = int(ring * 0.9), int(ring * 0.5)
        cv2.rectangle(rgb, (cx - pw // 2, cy - ph // 2), (cx + pw // 2, cy + ph // 2), (20.0, 20.0, 24.0), -1)
        cv2.rectangle(alpha, (cx - pw // 2, cy - ph // 2), (cx + pw // 2, cy + ph // 2), (255.0,), -1)
        a = alpha.astype(np.float32)[..., None] / 255.0
        patch = np.dstack([(rgb * a + 0.5).astype(np.uint8), alpha])
        out.append((alpha >= 128, patch, (x - cx, y0)))
    return out
