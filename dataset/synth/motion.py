"""Smooth random motion and lighting over a clip, precomputed as per-frame arrays.

Everything is a sum of a few slow sinusoids with random periods and phases,
plus occasional quick steps (a presenter stepping aside) and turn events
(showing the back), so motion is smooth but not periodic, and cheap.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def wander(rng: np.random.Generator, frames: int, amplitude: float, period: tuple[float, float] = (60, 240),
           terms: int = 3) -> np.ndarray:
    """A smooth zero-mean random curve with peak magnitude about ``amplitude``."""
    t = np.arange(frames, dtype=np.float64)
    out = np.zeros(frames)
    for _ in range(terms):
        out += rng.uniform(0.4, 1.0) * np.sin(2 * np.pi * t / rng.uniform(*period) + rng.uniform(0, 2 * np.pi))
    return out * (amplitude / terms * 1.6)


def steps(rng: np.random.Generator, frames: int, amplitude: float, count: int) -> np.ndarray:
    """Quick smooth moves (8-16 frames) to new offsets: the fast motion that blurs frames."""
    t = np.arange(frames, dtype=np.float64)
    out = np.zeros(frames)
    for _ in range(count):
        start = rng.uniform(0, frames)
        length = rng.uniform(8, 16)
        x = np.clip((t - start) / length, 0, 1)
        out += rng.uniform(-1, 1) * amplitude * (3 * x ** 2 - 2 * x ** 3)
    return out - out.mean()


def turns(rng: np.random.Generator, start: int, end: int, rate: float) -> np.ndarray:
    """Rotation angle (radians, 0 = facing front, pi = back) over frames ``start..end``.

    Turns last 8-14 frames each way and the back is held 25-80 frames; about
    ``rate`` turns per 100 frames.
    """
    n = end - start
    theta = np.zeros(n)
    count = int(rng.poisson(rate * n / 100.0))
    cursor = int(rng.uniform(5, 40))
    for _ in range(count):
        turn = int(rng.uniform(8, 14))
        hold = int(rng.uniform(25, 80))
        if cursor + 2 * turn + hold >= n:
            break
        ramp = (1 - np.cos(np.linspace(0, np.pi, turn))) / 2 * np.pi
        theta[cursor:cursor + turn] = ramp
        theta[cursor + turn:cursor + turn + hold] = np.pi
        theta[cursor + turn + hold:cursor + 2 * turn + hold] = ramp[::-1]
        cursor += 2 * turn + hold + int(rng.uniform(20, 80))
    return theta


@dataclass
class Lighting:
    """Per-frame RGB gains (lighting level times white balance) and defocus blur sigma."""

    gains: np.ndarray
    defocus: np.ndarray

    def lut(self, frame: int) -> np.ndarray:
        """A (256, 1, 3) uint8 lookup table for ``cv2.LUT`` that applies frame ``frame``'s gains."""
        ramp = np.arange(256, dtype=np.float32)[:, None] * self.gains[frame][None, :].astype(np.float32)
        return np.clip(ramp + 0.5, 0, 255).astype(np.uint8).reshape(256, 1, 3)


def lighting(rng: np.random.Generator, frames: int, strength: float, blur: float, unit: float) -> Lighting:
    """Slow brightness and colour-temperature drift, sometimes a light switched on, sometimes a focus hunt."""
    level = 1.0 + wander(rng, frames, 0.08 * strength, (100, 400))
    if rng.random() < 0.3 * min(strength, 1.0):
        level += steps(rng, frames, 0.15 * strength, 1)
    warmth = wander(rng, frames, 0.04 * strength, (150, 500)) + rng.uniform(-0.05, 0.05) * strength
    gains = np.stack([level * (1 + warmth), level * np.ones(frames), level * (1 - warmth)], axis=1)
    defocus = np.zeros(frames)
    if rng.random() < 0.3 * min(blur, 1.0) and frames > 30:
        start, length = int(rng.uniform(0, frames - 20)), int(rng.uniform(8, 20))
        bump = np.sin(np.linspace(0, np.pi, length)) * rng.uniform(1.0, 2.5) * unit * blur
        defocus[start:start + length] = bump[: frames - start]
    return Lighting(np.clip(gains, 0.6, 1.5), defocus)
