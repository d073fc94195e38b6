"""Training augmentation: the seed's pipeline (section 4.5), in albumentations, with its affine bug fixed.

The seed's ``random_affine`` scaled the x translation by the image height and
the y translation by the width; on the tall and wide buckets that shifted
crops by up to 4x the intended 6.25 % in one direction and almost not at all
in the other. ``Affine(translate_percent=...)`` scales x by the width and y by
the height.

Augmentation must be a pure function of (seed, epoch, sample) so that runs
are reproducible with any number of loader workers and resume exactly, so
the pipeline is re-seeded for every sample instead of drawing from a global
generator.
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

BORDER_FILL = 114


def seed_pipeline() -> A.Compose:
    """Photometric ``aug_medium``, then affine (p 0.7), then one cutout hole (p 0.7), as the seed."""
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.OneOf([A.CLAHE(clip_limit=2.0, p=0.5), A.Sharpen(p=0.25)], p=0.35),
        A.RandomBrightnessContrast(p=0.7),
        A.OneOf([A.GaussNoise(std_range=(0.012, 0.028), p=0.35), A.ISONoise(p=0.7),
                 A.ImageCompression(quality_range=(70, 100), p=0.7)], p=0.6),
        A.RGBShift(p=0.5),
        A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=12, val_shift_limit=8, p=0.5),
        A.ToGray(p=0.3),
        A.Affine(rotate=(-8, 8), scale=(0.9, 1.1), translate_percent={"x": (-0.0625, 0.0625), "y": (-0.0625, 0.0625)},
                 shear=(-8, 8), border_mode=cv2.BORDER_CONSTANT, fill=BORDER_FILL, p=0.7),
        A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.01, 0.63), hole_width_range=(0.01, 0.63),
                        fill=BORDER_FILL, p=0.7),
    ])


class Augmenter:
    """Applies ``seed_pipeline`` to RGB uint8 crops, seeded per (seed, epoch, sample index)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.pipeline = seed_pipeline()

    def __call__(self, image: np.ndarray, epoch: int, index: int) -> np.ndarray:
        self.pipeline.set_random_seed(int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]))
        return self.pipeline(image=image)["image"]
