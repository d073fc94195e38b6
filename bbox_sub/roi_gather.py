"""RoI align on a CPU as one weighted gather of feature rows (``embedding_bag``).

torchvision's CPU ``roi_align`` walks every RoI through all 256 channel
planes of a feature map one plane at a time, on one thread, so at 1000
proposals per frame the pooling costs about as much as the rest of a bf16
detector (its CPU speed with this pooling: bench/results/detect_cpu_*.json).
Each output bin of RoI align (``aligned=False``, a fixed sampling ratio) is a
weighted sum of 4 x ratio^2 feature pixels, so the whole pooling is ``embedding_bag`` over
the map read as a ``(N * H * W, C)`` table, which is free to form from a
channels_last map, with the bilinear weights as per-sample weights: every
read is a contiguous channel row, and the kernel runs on every core.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

CHUNK = 4096
"""RoIs per gather: bounds the index and weight tensors (16 x 49 per RoI) to ~40 MB."""


def _axis_taps(start: Tensor, length: Tensor, bins: int, ratio: int, limit: int) -> tuple[Tensor, Tensor]:
    """Along one axis, for every RoI: ``(R, bins, ratio, 2)`` pixel indices and bilinear weights.

    torchvision's rules: a RoI is at least one pixel long, samples sit at the
    centres of ``ratio`` sub-bins, a sample beyond ``[-1, limit]`` weighs 0,
    one in ``[-1, 0]`` reads pixel 0, and one past the last pixel reads it.
    """
    step = length.clamp(min=1.0) / bins
    sub = torch.arange(bins * ratio, device=start.device, dtype=start.dtype)
    pos = start[:, None] + (sub // ratio + ((sub % ratio) + 0.5) / ratio)[None] * step[:, None]
    inside = ((pos >= -1.0) & (pos <= limit)).to(pos.dtype)
    pos = pos.clamp(min=0.0)
    low = pos.floor().clamp(max=limit - 1)
    pos = torch.where(low >= limit - 1, low, pos)
    high = (low + 1).clamp(max=limit - 1)
    frac = pos - low
    index = torch.stack([low, high], -1).long()
    weight = torch.stack([1 - frac, frac], -1) * inside[..., None]
    shape = (len(start), bins, ratio, 2)
    return index.view(shape), weight.view(shape)


def _gather(table: Tensor, rois: Tensor, height: int, width: int, output_size: tuple[int, int], scale: float,
            ratio: int) -> Tensor:
    bins_h, bins_w = output_size
    count = len(rois)
    x1, y1, x2, y2 = (rois[:, 1:].float() * scale).unbind(1)
    rows, row_w = _axis_taps(y1, y2 - y1, bins_h, ratio, height)
    cols, col_w = _axis_taps(x1, x2 - x1, bins_w, ratio, width)
    # (RoI, bin_y, bin_x, sample_y, tap_y, sample_x, tap_x): one bag per (RoI, bin_y, bin_x)
    base = rois[:, 0].long() * (height * width)
    index = (base.view(-1, 1, 1, 1, 1, 1, 1) + rows.view(count, bins_h, 1, ratio, 2, 1, 1) * width
             + cols.view(count, 1, bins_w, 1, 1, ratio, 2))
    weight = (row_w.view(count, bins_h, 1, ratio, 2, 1, 1) * col_w.view(count, 1, bins_w, 1, 1, ratio, 2)
              / (ratio * ratio))
    taps = 4 * ratio * ratio
    pooled = F.embedding_bag(index.reshape(-1, taps), table,
                             per_sample_weights=weight.reshape(-1, taps).to(table.dtype), mode="sum")
    return pooled.view(count, bins_h, bins_w, -1).permute(0, 3, 1, 2)


def roi_align_gather(feature: Tensor, rois: Tensor, output_size: tuple[int, int], scale: float,
                     sampling_ratio: int) -> Tensor:
    """``torchvision.ops.roi_align(feature, rois, output_size, scale, sampling_ratio)`` (``aligned=False``) for
    a fixed ``sampling_ratio > 0``; ``rois`` are ``(R, 5)`` rows of (image index, x1, y1, x2, y2). The result
    is ``(R, C, h, w)`` in channels_last order, in ``feature``'s dtype."""
    if sampling_ratio <= 0:
        raise ValueError("roi_align_gather needs a fixed sampling_ratio > 0")
    _, channels, height, width = feature.shape
    table = feature.permute(0, 2, 3, 1).reshape(-1, channels)
    if len(rois) == 0:
        return feature.new_zeros((0, channels, *output_size))
    return torch.cat([_gather(table, part, height, width, tuple(output_size), scale, sampling_ratio)
                      for part in rois.split(CHUNK)])


def pool_rois(feature: Tensor, rois: Tensor, output_size: tuple[int, int], scale: float,
              sampling_ratio: int) -> Tensor:
    """RoI align by the gather on a CPU, by torchvision's kernel elsewhere (and for adaptive sampling)."""
    if feature.device.type == "cpu" and sampling_ratio > 0:
        return roi_align_gather(feature, rois, output_size, scale, sampling_ratio)
    return roi_align(feature, rois, output_size, scale, sampling_ratio)
