"""Running a detector on batches of RGB pictures, on CPU or CUDA, and mapping boxes back to the originals."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.models.detection.image_list import ImageList

from bbox_sub.config import Precision
from bbox_sub.model import Detector
from bbox_sub.resize import resize, to_chw
from runtime.fuse import example_images, fold_batch_norms, fuse_conv_activations
from runtime.precision import autocast, channels_last_pays


@dataclass(frozen=True)
class Detections:
    """Boxes ``(K, 4)`` float32 xyxy in the original picture's pixels, scores ``(K,)``, best first."""

    boxes: np.ndarray
    scores: np.ndarray


def _fuse_activations(model: Detector, example: torch.Tensor) -> None:
    """Convolution + activation fusion for the two parts that have such pairs: the backbone with its FPN, and
    the RPN head (checked on the FPN's maps of the same example)."""
    fuse_conv_activations(model.backbone, example)
    with torch.no_grad():
        maps = list(model.backbone(example).values())
    fuse_conv_activations(model.rpn.head, maps)


class BatchDetector:
    """A detector in eval mode on a device, with mixed precision and channels_last where they pay
    (``runtime.precision.autocast_dtype``: CUDA, and CPUs with bf16 instructions).

    ``fuse`` folds the backbone's batch norms into its convolutions and, on a
    CPU, runs each convolution of the backbone, FPN and RPN head with its
    activation as one oneDNN operation, in place (see ``runtime.fuse``): pass
    ``False`` for a model that goes on training.
    """

    def __init__(self, model: Detector, device: torch.device, *, precision: Precision = "bf16",
                 channels_last: bool = True, compile_backbone: bool = False, fuse: bool = True) -> None:
        self.device = device
        self.precision = precision
        self.channels_last = channels_last and channels_last_pays(device, precision)
        model = model.to(device).eval()
        if fuse:
            fold_batch_norms(model.backbone.body, example_images(device))
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if fuse and device.type == "cpu":
            _fuse_activations(model, example_images(device))
        if compile_backbone and device.type == "cuda":
            model.backbone = torch.compile(model.backbone, dynamic=False)
        self.model = model

    def prepare(self, pictures: list[np.ndarray], short_side: int, max_size: int) -> ImageList:
        """Upload, resize, normalise and pad; pictures of one size (frames of a clip) are resized together."""
        if len({p.shape for p in pictures}) == 1:
            return self.model.preprocess(resize(to_chw(pictures, self.device), short_side, max_size),
                                         self.channels_last)
        return self.model.preprocess([resize(to_chw(p, self.device), short_side, max_size) for p in pictures],
                                     self.channels_last)

    @torch.inference_mode()
    def __call__(self, pictures: list[np.ndarray], short_side: int, max_size: int) -> list[Detections]:
        """Detect garments in RGB uint8 pictures."""
        if not pictures:
            return []
        images = self.prepare(pictures, short_side, max_size)
        with autocast(self.device, self.precision):
            outputs = self.model(images)
        results = []
        for picture, (height, width), out in zip(pictures, images.image_sizes, outputs):
            scale = torch.tensor([picture.shape[1] / width, picture.shape[0] / height] * 2, device=self.device)
            results.append(Detections((out["boxes"].float() * scale).cpu().numpy(),
                                      out["scores"].float().cpu().numpy()))
        return results
