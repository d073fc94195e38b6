"""The embedding network: timm trunk -> GeM -> Linear(512, no bias) -> BatchNorm1d, and its ArcFace loss.

``Embedder.forward`` returns the post-BN vector, as the seed's ``ENet`` did in
eval mode; callers L2-normalise it. The loss lives in a separate module
(``ArcFaceHead``) so that inference checkpoints and the embedding path never
depend on the number of training identities.
"""
from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ArcFaceLoss, CrossBatchMemory
from torch import nn

from metric_sub.config import EmbedderConfig, LossConfig, ModelConfig
from runtime.pretrained import load_backbone_file, load_lite_weights


class GeM(nn.Module):
    """Generalised-mean pooling; ``p`` is a frozen buffer (``gem_freeze``) or a parameter (``gem``)."""

    def __init__(self, p: float = 3.0, learnable: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        p_tensor = torch.tensor([float(p)])
        if learnable:
            self.p = nn.Parameter(p_tensor)
        else:
            self.register_buffer("p", p_tensor)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Powers of activations overflow bf16/fp16 easily; pool in fp32.
        p = self.p.float()
        pooled = x.float().clamp(min=self.eps).pow(p).mean(dim=(2, 3))
        return pooled.pow(1.0 / p)


class Embedder(nn.Module):
    def __init__(self, config: ModelConfig, trained: bool = True) -> None:
        """``trained``: the model will be trained or loaded from a training checkpoint, rather than embed
        with its pretrained weights as they are (which decides a default ``conv_head``)."""
        super().__init__()
        self.config = config
        self.backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, global_pool="",
                                          drop_path_rate=config.drop_path_rate)
        if not keeps_conv_head(config, trained, self.backbone):
            drop_conv_head(self.backbone, config.backbone)
        self.pool = GeM(config.gem_p, learnable=config.pool == "gem")
        self.dropout = nn.Dropout(config.dropout)
        self.neck = nn.Linear(self.backbone.num_features, config.embedding_size, bias=False)
        init_neck(self.neck)
        self.bottleneck = nn.BatchNorm1d(config.embedding_size)
        data_config = timm.data.resolve_data_config({}, model=self.backbone)
        self.register_buffer("mean", torch.tensor(data_config["mean"]).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(data_config["std"]).view(1, 3, 1, 1) * 255.0, persistent=False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB ``(N, 3, H, W)`` to the backbone's normalised float input, on the device.

        Normalising here rather than in the data loader moves a quarter of the
        bytes to the GPU and keeps the loaders free of model details.
        """
        return (images.float() - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Post-BN embeddings (not normalised) of uint8 or already normalised float images."""
        x = self.normalise(images) if images.dtype == torch.uint8 else images
        features = self.backbone.forward_features(x)
        return self.bottleneck(self.neck(self.dropout(self.pool(features))))

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm fp32 embeddings; the model must be in eval mode."""
        return F.normalize(self(images).float(), dim=1)


def has_conv_head(backbone: nn.Module) -> bool:
    return isinstance(getattr(backbone, "conv_head", None), nn.Conv2d) and hasattr(backbone, "bn2")


def keeps_conv_head(config: ModelConfig, trained: bool, backbone: nn.Module) -> bool:
    """``config.conv_head``, or by default: kept when trained, dropped for zero-shot use where there is one."""
    if config.conv_head is not None:
        return config.conv_head
    return trained or not has_conv_head(backbone)


def drop_conv_head(backbone: nn.Module, name: str) -> None:
    """Replace an EfficientNet's last 1x1 convolution and its norm with identities (``model.conv_head``)."""
    if not has_conv_head(backbone):
        raise ValueError(f"model.conv_head: false needs an EfficientNet-style backbone with a conv_head, "
                         f"and {name!r} has none")
    backbone.conv_head, backbone.bn2 = nn.Identity(), nn.Identity()
    backbone.num_features = backbone.feature_info[-1]["num_chs"]


def init_neck(neck: nn.Linear) -> None:
    """A fixed initial projection rather than one from the global random stream: an untrained (zero-shot)
    embedder is this projection of ImageNet features, and with an unseeded stream its retrieval recall changed
    from one process to the next. A neck no wider than its output starts as an isometry (orthonormal
    columns), so that the untrained embedder keeps the pooled features' cosines exactly."""
    generator = torch.Generator().manual_seed(0)
    if neck.in_features <= neck.out_features:
        nn.init.orthogonal_(neck.weight, generator=generator)
    else:
        nn.init.kaiming_uniform_(neck.weight, a=math.sqrt(5), generator=generator)


def build_embedder(config: EmbedderConfig, trained: bool = True) -> Embedder:
    """A model with the initial weights the config names (never downloaded); ``trained`` as ``Embedder``'s."""
    model = Embedder(config.model, trained)
    if config.model.init == "lite":
        load_lite_weights(model.backbone, int(config.model.backbone.removeprefix("tf_efficientnet_lite")))
    elif config.model.init == "file":
        load_backbone_file(model, config.model.weights, backbone="backbone")
    return model


class ArcFaceMemory(CrossBatchMemory):
    """The seed's cross-batch memory around ArcFace, on top of PML's ring buffer.

    PML's ``CrossBatchMemory`` only wraps pair/triplet losses (it hands the
    memory to the loss as reference embeddings, which classification losses
    refuse). The seed instead classified the memory rows too: the batch is
    written into the ring first, then ArcFace runs over [batch; filled memory]
    so the memory adds gradient to the class weights only. This subclass keeps
    PML's queue and replaces the forward with that rule. The queue position is
    saved with the state_dict so a resumed run continues bit for bit.
    """

    @classmethod
    def check_loss_support(cls, loss_name: str) -> None:
        if loss_name != "ArcFaceLoss":
            raise ValueError(f"ArcFaceMemory wraps ArcFaceLoss, not {loss_name}")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        self.embedding_memory = self.embedding_memory.to(embeddings.device, embeddings.dtype)
        self.label_memory = self.label_memory.to(labels.device)
        self.add_to_memory(embeddings, labels, len(embeddings))
        filled = self.memory_size if self.has_been_filled else self.queue_idx
        return self.loss(torch.cat([embeddings, self.embedding_memory[:filled]]),
                         torch.cat([labels, self.label_memory[:filled]]))

    def get_extra_state(self) -> dict[str, int | bool]:
        return {"queue_idx": int(self.queue_idx), "has_been_filled": bool(self.has_been_filled)}

    def set_extra_state(self, state: dict[str, int | bool]) -> None:
        self.queue_idx = int(state["queue_idx"])
        self.has_been_filled = bool(state["has_been_filled"])


class ArcFaceHead(nn.Module):
    """ArcFace (s, m) over dense identity labels, optionally with cross-batch memory.

    PML takes the margin in degrees; the config holds the seed's radians.
    The loss always runs in fp32 outside autocast: PML casts its class weights
    to the embeddings' dtype, which would silently turn them into bf16.
    """

    def __init__(self, config: LossConfig, num_classes: int, embedding_size: int) -> None:
        super().__init__()
        self.arcface = ArcFaceLoss(num_classes, embedding_size, margin=math.degrees(config.margin),
                                   scale=config.scale)
        self.memory = (ArcFaceMemory(self.arcface, embedding_size, memory_size=config.xbm)
                       if config.xbm else None)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):
            embeddings = embeddings.float()
            if self.memory is not None:
                return self.memory(embeddings, labels)
            return self.arcface(embeddings, labels)

    @torch.no_grad()
    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Plain scaled cosines to every class (no margin), for training accuracy."""
        return self.arcface.get_logits(embeddings.float())
