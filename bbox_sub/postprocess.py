"""Box selection for a whole batch at once.

torchvision's RPN and RoI heads select boxes with a Python loop over images,
and its ``batched_nms`` switches to one NMS call per group above a few thousand
boxes. With 16 frames and five FPN levels that is 80 small NMS calls per batch,
each a device synchronisation, which is where a batched detector loses most of
its time on a GPU. Here groups are separated by coordinate offsets so one NMS
call covers many images, and per-image top-k is a rank computation instead of
a loop.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms


def nms_by_group(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group in one call: groups are shifted apart so boxes of different groups never overlap.

    Returns indices into ``boxes`` sorted by decreasing score, like ``torchvision.ops.batched_nms``.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes = boxes.float()
    span = boxes.max() - boxes.min().clamp(max=0) + 1
    shifted = boxes + (groups.to(boxes) * span)[:, None]
    return nms(shifted, scores.float(), iou_threshold)


def rank_within(owner: Tensor, count: int) -> Tensor:
    """Position of each entry among the entries of the same owner, keeping the given order.

    ``owner`` holds values in ``0..count-1``; entries are assumed already in the
    order that defines rank (e.g. decreasing score after NMS).
    """
    order = torch.sort(owner, stable=True).indices
    sorted_owner = owner[order]
    firsts = torch.zeros(count + 1, dtype=torch.int64, device=owner.device)
    firsts[1:] = torch.cumsum(torch.bincount(sorted_owner, minlength=count), 0)
    ranks = torch.empty_like(owner)
    ranks[order] = torch.arange(owner.numel(), device=owner.device) - firsts[sorted_owner]
    return ranks


def clip_to_sizes(boxes: Tensor, heights: Tensor, widths: Tensor) -> Tensor:
    """Clip ``(..., 4)`` boxes to per-row image sizes (``heights``/``widths`` broadcast against ``boxes[..., 0]``)."""
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), widths.unsqueeze(-1))
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), heights.unsqueeze(-1))
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def split_by_owner(owner: Tensor, count: int, *tensors: Tensor) -> list[list[Tensor]]:
    """Group rows by owner (rows of one owner keep their order); one list of per-owner tensors per input."""
    order = torch.sort(owner, stable=True).indices
    sizes = torch.bincount(owner, minlength=count).tolist()
    return [list(t[order].split(sizes)) for t in tensors]
