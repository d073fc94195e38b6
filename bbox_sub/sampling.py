"""Which anchors and proposals train the detector: torchvision's balanced sampler, drawn per image from that
image's own seed.

torchvision draws the positive and negative anchors (RPN) and proposals (RoI heads) of every image of a batch
from the one global random stream, so which boxes an image trains on depends on the images before it in its
batch, and with several ranks on how the batch was split. Seeded per image from the sample's position in the
training stream (``bbox_sub.data.TrainSet``), like its augmentation, an image trains on the same boxes whatever
the batch, the rank or a resume, which is what lets N ranks take the step one process takes.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from bbox_sub.model import Detector


class PerImageSampler(BalancedPositiveNegativeSampler):
    """torchvision's sampler run image by image, each on a generator seeded from ``seeds`` (one per image);
    with no seeds for the batch (evaluation, a caller that sets none) it is torchvision's sampler as is."""

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        super().__init__(batch_size_per_image, positive_fraction)
        self.seeds: list[int] | None = None

    def __call__(self, matched_idxs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        if self.seeds is None or len(self.seeds) != len(matched_idxs):
            return super().__call__(matched_idxs)
        positives: list[Tensor] = []
        negatives: list[Tensor] = []
        for seed, matched in zip(self.seeds, matched_idxs):
            cuda = matched.device.type == "cuda"
            with torch.random.fork_rng(devices=[matched.device] if cuda else []):
                torch.random.default_generator.manual_seed(seed)
                if cuda:
                    torch.cuda.manual_seed(seed)
                pos, neg = super().__call__([matched])
            positives += pos
            negatives += neg
        return positives, negatives


def seed_sampling(model: Detector, seeds: list[int] | None) -> None:
    """Draw the next training pass's boxes image by image from ``seeds`` (``None``: the global stream)."""
    for owner in (model.rpn, model.roi_heads):
        sampler = owner.fg_bg_sampler
        if not isinstance(sampler, PerImageSampler):
            sampler = PerImageSampler(sampler.batch_size_per_image, sampler.positive_fraction)
            owner.fg_bg_sampler = sampler
        sampler.seeds = seeds
