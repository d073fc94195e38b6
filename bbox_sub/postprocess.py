"""Box selection for a whole batch at once.

torchvision's RPN and RoI heads select boxes with a Python loop over images,
and its ``batched_nms`` switches to one NMS call per group above a few thousand
boxes. With 16 frames and five FPN levels that is 80 small NMS calls per batch,
each a device synchronisation, which is where a batched detector loses most of
its time on a GPU. Here per-image top-k is a rank computation instead of a
loop, and NMS runs for all groups at once:

* on CUDA, ``dense_nms`` lays the groups out as a padded ``(G, K)`` batch
  and finds greedy NMS's answer as the fixed point of a matrix iteration
  (Cluster-NMS, Zheng et al. 2021): box ``j`` survives when no surviving
  higher-scoring box of its group overlaps it above the threshold. Starting
  from "all survive", iteration ``t`` settles box ``t`` for good, and the
  iteration stops at the first repeat, which is the unique fixed point and so
  exactly greedy NMS. torchvision's CUDA NMS instead ends in one serial pass
  over every box of the call, which costs tens of milliseconds for the 40 000
  proposals of a 16-frame batch;
* on CPU, torchvision's ``batched_nms`` does: one call with the groups
  shifted apart by coordinate offsets for small inputs, one call per group
  above 4000 boxes. There is no device to wait for, and one call over all
  groups would compare every box with every other of the call: for 40 groups
  of 1000 boxes (8 frames' proposals), 40 times the comparisons.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms


def nms_by_group(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group: ``dense_nms`` on CUDA, torchvision's ``batched_nms`` on CPU.

    Returns indices into ``boxes`` sorted by decreasing score, like ``torchvision.ops.batched_nms``.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if boxes.device.type == "cuda":
        return dense_nms(boxes, scores, groups, iou_threshold)
    return batched_nms(boxes.float(), scores.float(), groups, iou_threshold)


CHECK_EVERY = 4
"""Cluster-NMS steps between convergence checks: each check waits for the GPU, a step takes microseconds."""


def dense_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float,
              max_pairs: int = 1 << 26) -> Tensor:
    """Greedy NMS within each group, all groups together as a padded batch (see the module docstring).

    ``max_pairs`` bounds the box pairs held at once (about 20 bytes each at the peak); larger
    batches are done a slice of groups at a time. Same contract as ``nms_by_group``.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]  # by group, best first within each
    _, counts = torch.unique_consecutive(groups[order], return_counts=True)
    width = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    group_of = torch.repeat_interleave(torch.arange(len(counts), device=boxes.device), counts)
    slot = torch.arange(len(order), device=boxes.device) - starts[group_of]
    padded = boxes.new_zeros((len(counts), width, 4), dtype=torch.float32)
    padded[group_of, slot] = boxes[order].float()
    valid = torch.zeros((len(counts), width), dtype=torch.bool, device=boxes.device)
    valid[group_of, slot] = True
    keep = padded_nms(padded, valid, iou_threshold, max_pairs)
    kept = order[keep[group_of, slot]]
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def padded_nms(boxes: Tensor, valid: Tensor, iou_threshold: float, max_pairs: int = 1 << 26) -> Tensor:
    """Greedy NMS survivors ``(R, K)`` of ``R`` independent rows of ``K`` boxes, each row sorted best first.

    ``valid`` marks real boxes (padding and filtered boxes neither survive nor
    suppress); rows are processed a slice at a time so that at most about
    ``max_pairs`` box pairs are held at once.
    """
    keep = torch.empty_like(valid)
    width = boxes.shape[1]
    step = max(1, max_pairs // max(width * width, 1))
    for first in range(0, len(boxes), step):
        part = slice(first, first + step)
        keep[part] = _greedy_keep(boxes[part], valid[part], iou_threshold)
    return keep


def _pairwise_overlap(low: Tensor, high: Tensor) -> Tensor:
    """``(G, K, K)`` length of the overlap of every pair of ``(G, K)`` intervals along one axis."""
    return (torch.minimum(high[:, :, None], high[:, None, :]) - torch.maximum(low[:, :, None], low[:, None, :])
            ).clamp(min=0)


def _greedy_keep(boxes: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS survivors of ``(G, K, 4)`` boxes, each row sorted best first, as the Cluster-NMS fixed point."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    area = (x2 - x1) * (y2 - y1)
    inter = _pairwise_overlap(x1, x2) * _pairwise_overlap(y1, y2)
    overlaps = inter / (area[:, :, None] + area[:, None, :] - inter) > iou_threshold
    del inter
    overlaps &= torch.ones(overlaps.shape[-2:], dtype=torch.bool, device=boxes.device).triu(1)
    overlaps &= valid[:, :, None]
    suppressor = overlaps.to(torch.bfloat16 if boxes.is_cuda else torch.float32)
    keep = valid
    while True:  # at most K rounds; the fixed point is stable, so extra steps between checks cost nothing else
        previous = keep
        for _ in range(CHECK_EVERY):
            hit = torch.bmm(keep.unsqueeze(1).to(suppressor.dtype), suppressor).squeeze(1) > 0
            keep = valid & ~hit
        if torch.equal(keep, previous):
            return keep


def best_survivors(boxes: Tensor, scores: Tensor, keep: Tensor, limit: int
                   ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Per image, the ``limit`` best-scoring kept boxes, best first, from ``(N, M, 4)`` boxes and ``(N, M)``
    scores (in 0..1) and keep mask; returns per-image boxes, scores and positions in ``M``.

    One ``topk`` for the whole batch; the only wait for the GPU is learning how many each image kept.
    """
    ranked = torch.where(keep, scores, -1.0)
    best, pick = ranked.topk(min(limit, ranked.shape[1]), dim=1)
    chosen = torch.gather(boxes, 1, pick[..., None].expand(-1, -1, 4))
    kept = (best >= 0).sum(1).tolist()
    return ([chosen[i, :n] for i, n in enumerate(kept)], [best[i, :n] for i, n in enumerate(kept)],
            [pick[i, :n] for i, n in enumerate(kept)])


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
