"""Short-side resizing shared by training samples and batched inference, so both see the same pixels."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def scaled_size(height: int, width: int, short_side: int, max_size: int) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge``: short side to ``short_side`` unless the long side would pass ``max_size``."""
    scale = short_side / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return int(round(height * scale)), int(round(width * scale))


def to_chw(images: np.ndarray | list[np.ndarray], device: torch.device | str = "cpu") -> Tensor:
    """RGB uint8 ``(H, W, 3)`` (or ``(N, H, W, 3)``) to uint8 channels-first on ``device``; the copy stays uint8
    so that a host-to-GPU transfer moves a quarter of the bytes of float."""
    cuda = torch.device(device).type == "cuda"
    if isinstance(images, list):  # stacked straight into page-locked memory: one host copy, not two
        tensor = torch.empty((len(images), *images[0].shape), dtype=torch.uint8, pin_memory=cuda)
        np.stack(images, out=tensor.numpy())
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(images))
        tensor = tensor.pin_memory() if cuda else tensor
    if cuda:
        tensor = tensor.to(device, non_blocking=True)
    return tensor.movedim(-1, -3)


def resize(images: Tensor, short_side: int, max_size: int) -> Tensor:
    """Bilinear resize of ``(3, H, W)`` or ``(N, 3, H, W)`` images (any dtype) to float32 0..255."""
    height, width = images.shape[-2:]
    size = scaled_size(height, width, short_side, max_size)
    batch = images.float() if images.dim() == 4 else images.float()[None]
    if size != (height, width):
        batch = F.interpolate(batch, size=size, mode="bilinear", align_corners=False)
    return batch if images.dim() == 4 else batch[0]
