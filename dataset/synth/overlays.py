"""Text and graphics drawn over pixels: the live-stream UI and shop-image captions.

Overlays never change annotations: annotators box a garment through the
stream's UI (the real clips have info cards over the garment and the boxes
still span it), so overlays are drawn after the label map is final.
"""
from __future__ import annotations

import cv2
import numpy as np

from dataset.synth.colours import RGB, family_colour
from dataset.synth.compose import blend_into
from dataset.synth.garments import random_text

FONT = cv2.FONT_HERSHEY_SIMPLEX
COMMENTS = ("size M?", "love it", "link pls", "how tall are you?", "show the back", "so pretty", "price?",
            "restock when?", "red one!", "fits 50kg?", "666", "haha", "need this", "other colours?", "in stock?",
            "just bought", "material?", "wow", "hi sis", "cute")


def _rounded(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, r: int, colour: tuple[float, ...]) -> None:
    """A filled rounded rectangle."""
    r = max(0, min(r, (x1 - x0) // 2, (y1 - y0) // 2))
    cv2.rectangle(img, (x0 + r, y0), (x1 - r, y1), colour, -1)
    cv2.rectangle(img, (x0, y0 + r), (x1, y1 - r), colour, -1)
    for cx, cy in ((x0 + r, y0 + r), (x1 - r, y0 + r), (x0 + r, y1 - r), (x1 - r, y1 - r)):
        cv2.circle(img, (cx, cy), r, colour, -1, cv2.LINE_AA)


class Patch:
    """A small premultiplied RGBA drawing: shapes and text with their own opacity."""

    def __init__(self, width: int, height: int) -> None:
        self.rgb = np.zeros((height, width, 3), np.uint8)
        self.alpha = np.zeros((height, width), np.uint8)

    def box(self, x0: int, y0: int, x1: int, y1: int, colour: RGB, opacity: float, radius: int = 0) -> None:
        _rounded(self.rgb, x0, y0, x1, y1, radius, tuple(float(c) for c in colour))
        _rounded(self.alpha, x0, y0, x1, y1, radius, (float(opacity * 255),))

    def circle(self, cx: int, cy: int, r: int, colour: RGB, opacity: float = 1.0) -> None:
        cv2.circle(self.rgb, (cx, cy), r, tuple(float(c) for c in colour), -1, cv2.LINE_AA)
        cv2.circle(self.alpha, (cx, cy), r, (float(opacity * 255),), -1, cv2.LINE_AA)

    def text(self, text: str, x: int, y: int, scale: float, colour: RGB, thickness: int = 1) -> None:
        cv2.putText(self.rgb, text, (x, y), FONT, scale, tuple(float(c) for c in colour), thickness, cv2.LINE_AA)
        cv2.putText(self.alpha, text, (x, y), FONT, scale, (255.0,), thickness, cv2.LINE_AA)

    def rgba(self) -> np.ndarray:
        """Premultiplied RGBA, ready for ``compose.blend_into``."""
        a = self.alpha.astype(np.float32) / 255.0
        return np.dstack([(self.rgb * a[..., None] + 0.5).astype(np.uint8), self.alpha])


def text_width(text: str, scale: float, thickness: int = 1) -> int:
    return cv2.getTextSize(text, FONT, scale, thickness)[0][0]


def _username(rng: np.random.Generator) -> str:
    return random_text(rng).split(" ")[0].lower() + str(int(rng.integers(10, 999)))


class StreamUI:
    """The live-stream interface of one clip: a streamer bar, likes, comments, a price tag, a banner, an info card.

    Which elements appear and what they say is fixed per clip; comments and
    the like count change over time, so patches are redrawn only when they
    change.
    """

    def __init__(self, width: int, height: int, rng: np.random.Generator, density: float) -> None:
        self.width, self.height = width, height
        chance = {"name": 0.9, "likes": 0.8, "comments": 0.8, "price": 0.55, "banner": 0.45, "card": 0.3}
        self.show = {k: bool(rng.random() < min(1.0, p * density)) for k, p in chance.items()}
        self.name = random_text(rng).split(" ")[0].capitalize() + "_" + random_text(rng).split(" ")[0].lower()
        self.price = f"RMB {int(rng.integers(39, 599))}"
        self.banner = f"No.{int(rng.integers(1, 40))} " + " ".join(rng.choice(["S", "M", "L", "XL", "pink", "black", "white", "blue"], 3))
        self.comments = [f"{_username(rng)}: {rng.choice(COMMENTS)}" for _ in range(60)]
        self.likes0 = int(rng.integers(100, 90000))
        self.card_rows = ["INFO", f"{int(rng.integers(155, 175))}cm", f"{int(rng.integers(42, 60))}kg", "size S/M"]
        self.card_side = int(rng.integers(2))
        self.accent = family_colour(rng)
        self._cache: dict[str, tuple[object, np.ndarray, tuple[int, int]]] = {}

    @property
    def unit(self) -> float:
        """Font scale unit: UI elements scale with the frame width."""
        return self.width / 540.0

    def patches(self, frame_index: int) -> list[tuple[np.ndarray, tuple[int, int]]]:
        """Premultiplied RGBA patches and their frame positions for one frame."""
        out = []
        for key in ("name", "likes", "comments", "price", "banner", "card"):
            if self.show[key]:
                state = self._state(key, frame_index)
                cached = self._cache.get(key)
                if cached is None or cached[0] != state:
                    patch, pos = getattr(self, "_" + key)(state)
                    self._cache[key] = (state, patch, pos)
                out.append(self._cache[key][1:])  # type: ignore[arg-type]
        return out

    def draw(self, frame: np.ndarray, frame_index: int) -> None:
        """Composite the UI onto a frame in place."""
        for rgba, (x, y) in self.patches(frame_index):
            h, w = rgba.shape[:2]
            xa, ya, xb, yb = max(x, 0), max(y, 0), min(x + w, self.width), min(y + h, self.height)
            if xb > xa and yb > ya:
                blend_into(frame[ya:yb, xa:xb], np.ascontiguousarray(rgba[ya - y:yb - y, xa - x:xb - x]))

    def _state(self, key: str, frame_index: int) -> object:
        if key == "likes":
            return frame_index // 12
        if key == "comments":
            return frame_index // 36
        return 0

    def _name(self, _: object) -> tuple[np.ndarray, tuple[int, int]]:
        u = self.unit
        w, h = int(200 * u), int(44 * u)
        p = Patch(w, h)
        p.box(0, 0, w - 1, h - 1, (20, 20, 20), 0.45, h // 2)
        p.circle(h // 2, h // 2, int(h * 0.4), self.accent)
        p.text(self.name[:14], int(h * 1.05), int(h * 0.48), 0.45 * u, (255, 255, 255), max(1, int(u)))
        p.text(f"{int(self.likes0 / 7)} fans", int(h * 1.05), int(h * 0.85), 0.35 * u, (220, 220, 220), 1)
        p.box(w - int(58 * u), int(9 * u), w - int(8 * u), h - int(9 * u), (250, 60, 90), 0.95, int(12 * u))
        p.text("+", w - int(38 * u), h - int(15 * u), 0.6 * u, (255, 255, 255), max(1, int(2 * u)))
        return p.rgba(), (int(10 * u), int(12 * u))

    def _likes(self, state: object) -> tuple[np.ndarray, tuple[int, int]]:
        u = self.unit
        count = self.likes0 + int(state) * 37  # type: ignore[call-overload]
        w, h = int(70 * u), int(64 * u)
        p = Patch(w, h)
        t = np.linspace(0, 2 * np.pi, 40)
        heart = np.stack([w / 2 + 1.3 * u * 16 * np.sin(t) ** 3,
                          h * 0.38 - 1.3 * u * (13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], 1)
        cv2.fillPoly(p.rgb, [heart.astype(np.int32)], (250, 70, 110), cv2.LINE_AA)
        cv2.fillPoly(p.alpha, [heart.astype(np.int32)], (240.0,), cv2.LINE_AA)
        label = f"{count / 10000:.1f}w" if count >= 10000 else str(count)
        p.text(label, max(0, (w - text_width(label, 0.4 * u)) // 2), h - int(4 * u), 0.4 * u, (255, 255, 255), max(1, int(u)))
        return p.rgba(), (self.width - w - int(8 * u), self.height - h - int(70 * u))

    def _comments(self, state: object) -> tuple[np.ndarray, tuple[int, int]]:
        u = self.unit
        lines = self.comments[int(state) % 50:int(state) % 50 + 4]  # type: ignore[call-overload]
        line_h = int(26 * u)
        w, h = int(300 * u), line_h * len(lines)
        p = Patch(w, h)
        for k, line in enumerate(lines):
            tw = min(text_width(line, 0.4 * u) + int(16 * u), w - 1)
            p.box(0, k * line_h + 2, tw, (k + 1) * line_h - 2, (10, 10, 10), 0.35, int(10 * u))
            user, _, said = line.partition(":")
            p.text(user + ":", int(8 * u), (k + 1) * line_h - int(8 * u), 0.4 * u, (255, 220, 120), 1)
            p.text(said, int(8 * u) + text_width(user + ":", 0.4 * u), (k + 1) * line_h - int(8 * u), 0.4 * u, (255, 255, 255), 1)
        return p.rgba(), (int(10 * u), self.height - h - int(60 * u))

    def _price(self, _: object) -> tuple[np.ndarray, tuple[int, int]]:
        u = self.unit
        w, h = int(118 * u), int(62 * u)
        p = Patch(w, h)
        p.box(0, 0, w - 1, h - 1, (235, 50, 40), 0.92, int(10 * u))
        p.text(self.price, int(8 * u), int(28 * u), 0.55 * u, (255, 255, 255), max(1, int(2 * u)))
        p.text("limited -20%", int(8 * u), int(50 * u), 0.38 * u, (255, 230, 150), 1)
        return p.rgba(), (self.width - w - int(10 * u), int(self.height * 0.42))

    def _banner(self, _: object) -> tuple[np.ndarray, tuple[int, int]]:
        u = self.unit
        w, h = min(self.width - int(20 * u), text_width(self.banner, 0.5 * u) + int(20 * u)), int(28 * u)
        p = Patch(w, h)
        p.box(0, 0, w - 1, h - 1, (250, 250, 250), 0.75, 0)
        p.text(self.banner, int(10 * u), int(20 * u), 0.5 * u, (40, 40, 200), max(1, int(u)))
        return p.rgba(), ((self.width - w) // 2, int(62 * u))

    def _card(self, _: object) -> tuple[np.ndarray, tuple[int, int]]:
        """An info card (height, weight, sizes), semi-transparent, often over the garment as in real streams."""
        u = self.unit
        w, h = int(120 * u), int(110 * u)
        p = Patch(w, h)
        p.box(0, 0, w - 1, h - 1, (250, 250, 250), 0.3, int(6 * u))
        for k, row in enumerate(self.card_rows):
            p.text(row, int(10 * u), int((24 + 24 * k) * u), 0.45 * u, (255, 255, 255), max(1, int(u)))
        x = int(self.width * (0.56 if self.card_side else 0.08))
        return p.rgba(), (x, int(self.height * 0.18))


def shop_captions(image: np.ndarray, rng: np.random.Generator, density: float) -> None:
    """A brand name, a price badge and a sale banner on a shop image, each by chance."""
    size = image.shape[0]
    u = size / 800.0
    if rng.random() < min(1.0, 0.45 * density):
        text = random_text(rng).split(" ")[0]
        colour = (30, 30, 30) if image[: size // 8, : size // 3].mean() > 128 else (245, 245, 245)
        cv2.putText(image, text, (int(24 * u), int(64 * u)), cv2.FONT_HERSHEY_TRIPLEX, 1.6 * u, colour, max(1, int(3 * u)), cv2.LINE_AA)
    if rng.random() < min(1.0, 0.3 * density):
        p = Patch(int(170 * u), int(170 * u))
        p.circle(int(85 * u), int(85 * u), int(80 * u), (225, 40, 40), 0.95)
        p.text(f"-{int(rng.integers(2, 7)) * 10}%", int(28 * u), int(100 * u), 1.3 * u, (255, 255, 255), max(1, int(3 * u)))
        x, y = int(size - 190 * u), int(size - 190 * u) if rng.random() < 0.5 else int(20 * u)
        blend_into(image[y:y + p.alpha.shape[0], x:x + p.alpha.shape[1]], p.rgba())
    if rng.random() < min(1.0, 0.25 * density):
        h = int(70 * u)
        p = Patch(size, h)
        p.box(0, 0, size - 1, h - 1, family_colour(rng), 0.85)
        p.text(str(rng.choice(["NEW ARRIVAL", "HOT SALE", "2 FOR 1", "FREE SHIPPING", "LIMITED"])), int(30 * u), int(48 * u),
               1.1 * u, (255, 255, 255), max(1, int(3 * u)))
        blend_into(image[size - h:], p.rgba())
