"""Garment palettes and colour variants that stay distinguishable.

Shops sell one garment in several colours; the benchmark mimics that with
items that share silhouette and pattern but not colours. A variant's main
colour is kept at least ``MIN_DELTA_E`` (CIE Lab) away from its siblings', far
beyond the lighting changes applied later, so telling them apart is hard for
a colour-blind embedder yet always possible.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]

MIN_DELTA_E = 32.0
"""Smallest Lab distance between the main colours of two colour variants."""

# Fashion colour families (name, RGB); neutrals are listed more than once to be drawn more often.
FAMILIES: tuple[tuple[str, RGB], ...] = (
    ("black", (28, 28, 32)), ("black", (28, 28, 32)), ("white", (238, 238, 232)), ("white", (238, 238, 232)),
    ("grey", (140, 140, 145)), ("charcoal", (70, 72, 78)), ("beige", (214, 196, 168)), ("camel", (184, 140, 92)),
    ("navy", (32, 44, 86)), ("brown", (110, 72, 48)), ("olive", (112, 112, 60)), ("khaki", (180, 168, 120)),
    ("red", (196, 36, 44)), ("pink", (236, 160, 180)), ("rose", (200, 90, 120)), ("coral", (240, 120, 100)),
    ("orange", (232, 130, 40)), ("mustard", (214, 170, 50)), ("yellow", (246, 222, 90)), ("green", (48, 130, 70)),
    ("mint", (160, 220, 190)), ("teal", (30, 120, 128)), ("sky", (140, 190, 232)), ("blue", (40, 80, 180)),
    ("denim", (70, 100, 140)), ("lavender", (180, 160, 220)), ("purple", (100, 50, 130)), ("burgundy", (110, 24, 44)),
    ("cream", (246, 236, 210)), ("sage", (150, 170, 140)),
)


@dataclass(frozen=True)
class Palette:
    """The colours of one garment, by role: ``base`` covers most of it; the others draw patterns and prints."""

    base: RGB
    second: RGB
    accent: RGB
    third: RGB

    def role(self, name: str) -> RGB:
        return getattr(self, name)


def jitter(colour: Sequence[int], rng: np.random.Generator, amount: float = 14.0) -> RGB:
    """A nearby shade, so that two "navy" garments are not the same navy."""
    shifted = np.clip(np.asarray(colour, float) + rng.normal(0, amount, 3) + rng.normal(0, amount / 2), 0, 255)
    return tuple(int(v) for v in shifted)  # type: ignore[return-value]


def family_colour(rng: np.random.Generator, avoid: Sequence[RGB] = (), min_delta: float = 0.0) -> RGB:
    """A jittered colour from a random family, at least ``min_delta`` (Lab) from every colour in ``avoid``."""
    for _ in range(200):
        colour = jitter(FAMILIES[int(rng.integers(len(FAMILIES)))][1], rng)
        if not avoid or min(delta_e(colour, other) for other in avoid) >= min_delta:
            return colour
    return colour


def random_palette(rng: np.random.Generator) -> Palette:
    """Four colours with enough contrast between base and pattern colours to see the pattern."""
    base = family_colour(rng)
    second = family_colour(rng, [base], 25.0)
    accent = family_colour(rng, [base, second], 20.0)
    third = family_colour(rng, [base], 15.0)
    return Palette(base, second, accent, third)


def variant_palette(palette: Palette, siblings: Sequence[Palette], rng: np.random.Generator) -> Palette:
    """A colour variant: a new base colour far from every sibling's; other roles sometimes kept, as shops do."""
    taken = [p.base for p in siblings]
    base = family_colour(rng, taken, MIN_DELTA_E)
    second = palette.second if rng.random() < 0.5 and delta_e(palette.second, base) > 25 else family_colour(rng, [base], 25.0)
    accent = palette.accent if rng.random() < 0.6 and delta_e(palette.accent, base) > 20 else family_colour(rng, [base, second], 20.0)
    third = family_colour(rng, [base], 15.0)
    return Palette(base, second, accent, third)


_RGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
_WHITE = np.array([0.95047, 1.0, 1.08883])


def to_lab(colours: Sequence[Sequence[int]]) -> np.ndarray:
    """CIE Lab (D65) of sRGB colours, shape ``(N, 3)``."""
    rgb = np.asarray(colours, np.float64).reshape(-1, 3) / 255.0
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def delta_e(a: Sequence[int], b: Sequence[int]) -> float:
    """CIE76 colour distance."""
    lab = to_lab([a, b])
    return float(np.linalg.norm(lab[0] - lab[1]))


def skin_tone(rng: np.random.Generator) -> RGB:
    tones = ((244, 208, 186), (236, 196, 170), (224, 178, 150), (200, 150, 118), (160, 112, 84))
    return jitter(tones[int(rng.integers(len(tones)))], rng, 6.0)


def hair_colour(rng: np.random.Generator) -> RGB:
    tones = ((22, 18, 16), (22, 18, 16), (48, 32, 24), (86, 58, 38), (140, 100, 60), (196, 160, 110))
    return jitter(tones[int(rng.integers(len(tones)))], rng, 5.0)
