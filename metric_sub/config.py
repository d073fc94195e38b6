"""Typed configuration of one embedder: network, loss, training data, optimisation, inference.

One YAML file describes one model, so an ensemble is simply a list of files
(with their checkpoints). Every number the seed hard-coded is a field here,
with the seed's value as the default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from dataset.config import ConfigRegistry, StrictModel

CONFIG_DIR = Path(__file__).resolve().parent / "config"

SM_SIZES: tuple[tuple[int, int], ...] = (
    (100, 400), (134, 400), (166, 400), (200, 400), (214, 374), (234, 350),
    (256, 320), (290, 290), (320, 256), (350, 234), (374, 214), (400, 200),
)
"""The seed's 'SM' size table, ``(width, height)`` per aspect group, narrowest first."""


class ModelConfig(StrictModel):
    """Backbone, pooling and embedding head.

    ``init``: ``random`` (timm's initialisation), ``lite`` (the offline
    ImageNet EfficientNet-Lite weights; the backbone must be
    ``tf_efficientnet_lite{0,1,2}``) or ``file`` (``weights`` holds a backbone
    or full-model state_dict, e.g. Noisy-Student B5 weights fetched by hand).

    ``conv_head`` keeps (true) or drops (false) an EfficientNet's last 1x1
    convolution (320 to 1280 channels in the Lites), which ImageNet trained to
    feed its classifier; without it GeM pools the last block's maps. The
    default (null) keeps it in a model that is trained or loaded from a
    training checkpoint, and drops it where the model embeds with its
    pretrained weights untouched (zero-shot), as each is the better there
    (recall@1 with and without it: bench/results/embed_accuracy_light_cpu.json and
    embed_accuracy_light_nohead_cpu.json). Without
    it the neck is no wider than its output and starts as an isometry, so an
    untrained model keeps the pooled features' cosines exactly.
    """

    backbone: str = "tf_efficientnet_b5"
    init: Literal["random", "lite", "file"] = "random"
    weights: Path | None = None
    pool: Literal["gem_freeze", "gem"] = "gem_freeze"
    gem_p: float = Field(3.0, gt=0)
    embedding_size: int = Field(512, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    conv_head: bool | None = None

    @model_validator(mode="after")
    def _weights_match_init(self) -> "ModelConfig":
        if self.init == "file" and self.weights is None:
            raise ValueError("init 'file' needs model.weights")
        if self.init == "lite" and not self.backbone.startswith("tf_efficientnet_lite"):
            raise ValueError(f"init 'lite' needs a tf_efficientnet_lite backbone, not {self.backbone!r}")
        return self


class LossConfig(StrictModel):
    """ArcFace over instance identities; ``margin`` is in radians as in the seed (0.30)."""

    margin: float = Field(0.30, ge=0, lt=1.6)
    scale: float = Field(30.0, gt=0)
    xbm: int | None = Field(None, gt=0)


class DataConfig(StrictModel):
    """Which ground-truth crops train the model and how they are sized and augmented.

    ``bucket_scale`` shrinks the whole SM table (the tiny test model uses 0.25);
    the seed trains at 1.0.
    """

    min_frame: int = Field(80, ge=0)
    bucket_scale: float = Field(1.0, gt=0, le=2)
    cache: Literal["memory", "disk"] = "memory"
    augment: bool = True
    max_crop_side: int = Field(512, gt=0)


class TrainConfig(StrictModel):
    """Optimisation. ``batch_size`` and ``lr`` are those of the global batch: all ranks of a torchrun group and
    all ``accumulation`` steps together (``metric_sub.train`` splits each one-bucket batch into equal parts),
    so a config trains the same recipe on 1 or N GPUs. ``sync_bn`` normalises with the global batch's
    statistics when several ranks train (each rank's own otherwise, as the seed's one GPU did with its whole
    batch)."""

    epochs: int = Field(10, gt=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(3.5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup: float = Field(0.025, ge=0, lt=1)
    schedule: Literal["cosine", "constant"] = "cosine"
    amp: Literal["bf16", "fp16", "fp32"] = "fp16"
    seed: int = 12536
    workers: int = Field(0, ge=0)
    device: str = "auto"
    val_batch_size: int = Field(64, gt=0)
    accumulation: int = Field(1, ge=1)
    sync_bn: bool = False


class EmbedConfig(StrictModel):
    """Inference settings; ``dtype`` and ``channels_last`` apply on CUDA and on CPUs with bf16 instructions
    (``runtime.precision.autocast_dtype``), the others on CUDA only.

    ``compile`` wraps the model in ``torch.compile`` (one static graph, then
    one with symbolic height and width for the other buckets);
    ``cuda_graphs`` compiles in ``reduce-overhead`` mode, which also replays a
    captured CUDA graph per bucket shape so that small kernels stop paying
    launch latency; ``pad_batches`` pads a bucket's last batch to
    ``batch_size`` so the batch dimension never changes. On a CPU batches
    hold at most ``cpu_batch_size`` crops: larger ones run no faster there,
    and the maps of one pass, which the CPU allocator keeps for the next
    (``runtime.allocator.keep_freed_memory``), grow with the batch.
    """

    batch_size: int = Field(128, gt=0)
    cpu_batch_size: int = Field(32, gt=0)
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    channels_last: bool = True
    compile: bool = False
    cuda_graphs: bool = False
    pad_batches: bool = True
    device: str = "auto"


class EmbedderConfig(StrictModel):
    name: str
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    embed: EmbedConfig = EmbedConfig()

    def bucket_sizes(self) -> list[tuple[int, int]]:
        """The SM table at this config's scale, each side rounded to a multiple of 2."""
        s = self.data.bucket_scale
        return [(max(2, round(w * s / 2) * 2), max(2, round(h * s / 2) * 2)) for w, h in SM_SIZES]


EMBEDDER_CONFIGS = ConfigRegistry(kind="embedder", model=EmbedderConfig, folder=CONFIG_DIR, others=("match",))
"""The embedder configs that ship in ``metric_sub/config``, and how a name or a path becomes one."""


def load_embedder_config(name: str | Path, overrides: list[str] | None = None) -> EmbedderConfig:
    return EMBEDDER_CONFIGS.load(name, overrides)
