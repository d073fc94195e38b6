"""Folding batch norm into the convolution that feeds it, for inference.

In eval mode a batch norm is a per-channel affine map, so it can live in the
weights and bias of the convolution before it. Both stages gain from that on a
GPU: every norm removed is one full read and write of an activation map less,
and a frozen batch norm (the seed detector's choice) additionally computes in
float32 under bf16 autocast, which turns the activation into float32 until the
next convolution. timm's norm+activation modules keep their activation (and
drop) after folding.

Which norm follows which convolution is read off a real forward pass (the
norm's input must be the convolution's output tensor itself), not off module
names, so any timm backbone works; the folded model is checked against the
original on the same input before it is accepted.
"""
from __future__ import annotations

import torch
from timm.layers.norm_act import FrozenBatchNormAct2d
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from dataset.runtime import true_fp32

NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d, FrozenBatchNormAct2d)
"""timm's ``freeze_batch_norm_2d`` turns norms into the two frozen kinds, which are not BatchNorm2d subclasses."""


def _conv_norm_pairs(model: nn.Module, example: Tensor) -> list[tuple[nn.Conv2d, nn.Module]]:
    """(convolution, norm) pairs where the norm consumed exactly the convolution's output in a forward pass."""
    produced: dict[int, tuple[Tensor, nn.Conv2d]] = {}  # the tensor is held so that its id is not reused
    pairs: list[tuple[nn.Conv2d, nn.Module]] = []
    seen: set[int] = set()

    def after_conv(module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        produced[id(output)] = (output, module)

    def before_norm(module: nn.Module, inputs: tuple) -> None:
        _, conv = produced.get(id(inputs[0]), (None, None))
        if conv is not None and id(module) not in seen:
            seen.add(id(module))
            pairs.append((conv, module))

    handles = [m.register_forward_hook(after_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_pre_hook(before_norm) for m in model.modules() if isinstance(m, NORMS)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return pairs


def _fold(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Put the eval-mode affine map of ``norm`` into ``conv``'s weight and bias."""
    mean, var = norm.running_mean.float(), norm.running_var.float()
    weight = norm.weight.float() if norm.weight is not None else torch.ones_like(mean)
    shift = norm.bias.float() if norm.bias is not None else torch.zeros_like(mean)
    scale = weight * torch.rsqrt(var + norm.eps)
    bias = conv.bias.float() if conv.bias is not None else torch.zeros_like(mean)
    with torch.no_grad():
        conv.weight.copy_(conv.weight.float() * scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter((bias - mean) * scale + shift, requires_grad=conv.weight.requires_grad)


def _after_norm(norm: nn.Module) -> nn.Module:
    """What is left of a norm once folded: timm's drop and activation, or nothing."""
    rest = [m for m in (getattr(norm, "drop", None), getattr(norm, "act", None)) if m is not None]
    return nn.Sequential(*rest) if rest else nn.Identity()


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)


def example_images(device: torch.device, side: int = 128) -> Tensor:
    """A fixed ``(1, 3, side, side)`` input for ``fold_batch_norms``, drawn from its own generator:
    building a model for inference must not move the global random stream that training and tests rely on."""
    return torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device)


def fold_batch_norms(model: nn.Module, example: Tensor, rtol: float = 1e-3) -> int:
    """Fold every batch norm that directly follows a convolution into it, in place; returns how many.

    ``model`` must be in eval mode and ``example`` a valid input for
    ``model(example)``. Raises if the folded model's output differs from the
    original's by more than ``rtol`` of its largest magnitude (a norm whose
    convolution output also went elsewhere would do that); the model is then
    left half-folded and must be rebuilt. The check runs without TF32, whose
    rounding, compounded over a deep trained network, reaches several percent.
    """
    if model.training:
        raise ValueError("fold_batch_norms needs a model in eval mode")
    with torch.no_grad(), true_fp32():
        before = model(example)
    pairs = [(conv, norm) for conv, norm in _conv_norm_pairs(model, example)
             if conv.out_channels == norm.running_mean.numel()]
    for conv, norm in pairs:
        _fold(conv, norm)
        _replace(model, norm, _after_norm(norm))
    with torch.no_grad(), true_fp32():
        after = model(example)
    for old, new in zip(_flat(before), _flat(after)):
        error = (old.float() - new.float()).abs().max()
        if error > rtol * old.float().abs().max().clamp(min=1e-6):
            raise RuntimeError(f"folding batch norms changed the output by {float(error):.3g}")
    return len(pairs)


def _flat(output: Tensor | dict | list | tuple) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    values = output.values() if isinstance(output, dict) else output
    return [t for value in values for t in _flat(value)]
