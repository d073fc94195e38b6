"""Folding batch norm into the convolution that feeds it, and on a CPU the activation after it, for inference.

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

On a CPU, ``fuse_conv_activations`` then hands each convolution and the
in-place ReLU, ReLU6 or SiLU after it to oneDNN as one operation (the
activation as a post-op of the convolution), as PyTorch's own compiler does
for CPUs. The activation was a second pass over a map the size of the
convolution's output, one more read and write of every activation map (the
speeds measured with the fusion: bench/results/detect_cpu_bf16.json,
embed_cpu_bf16.json).
"""
from __future__ import annotations

from collections import Counter

import torch
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.norm_act import FrozenBatchNormAct2d
from timm.layers.padding import pad_same
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from runtime.precision import true_fp32

NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d, FrozenBatchNormAct2d)
"""timm's ``freeze_batch_norm_2d`` turns norms into the two frozen kinds, which are not BatchNorm2d subclasses."""


ACTIVATIONS = (nn.ReLU, nn.Hardtanh, nn.SiLU)
"""Activations oneDNN runs as a convolution post-op (``nn.ReLU6`` is a Hardtanh)."""


def _conv_pairs(model: nn.Module, example: Tensor,
                consumers: tuple[type, ...]) -> tuple[list[tuple[nn.Conv2d, nn.Module]], object]:
    """(convolution, consumer) pairs where, in a forward pass, every call of the consumer took exactly the output
    of a call of the convolution and every call of the convolution fed the consumer (a module shared across
    FPN levels qualifies; one that follows two different convolutions cannot be merged into either); and that
    pass's output (without TF32), the reference the changed model is checked against."""
    produced: dict[int, tuple[Tensor, nn.Conv2d]] = {}  # the tensor is held so that its id is not reused
    pairs: dict[tuple[int, int], tuple[nn.Conv2d, nn.Module]] = {}
    hits: Counter[tuple[int, int]] = Counter()
    calls: Counter[int] = Counter()

    def after_conv(module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        calls[id(module)] += 1
        produced[id(output)] = (output, module)

    def before_consumer(module: nn.Module, inputs: tuple) -> None:
        calls[id(module)] += 1
        _, conv = produced.get(id(inputs[0]), (None, None))
        if conv is not None:
            key = (id(conv), id(module))
            pairs.setdefault(key, (conv, module))
            hits[key] += 1

    handles = [m.register_forward_hook(after_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_pre_hook(before_consumer) for m in model.modules() if isinstance(m, consumers)]
    try:
        with torch.no_grad(), true_fp32():
            output = model(example)
    finally:
        for handle in handles:
            handle.remove()
    return [pair for key, pair in pairs.items() if hits[key] == calls[key[0]] == calls[key[1]]], output


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
    found, before = _conv_pairs(model, example, NORMS)
    pairs = [(conv, norm) for conv, norm in found if conv.out_channels == norm.running_mean.numel()]
    for conv, norm in pairs:
        _fold(conv, norm)
        _replace(model, norm, _after_norm(norm))
    _check_unchanged(model, example, before, rtol, "folding batch norms")
    return len(pairs)


def _check_unchanged(model: nn.Module, example: Tensor, before: object, rtol: float, what: str) -> None:
    with torch.no_grad(), true_fp32():
        after = model(example)
    for old, new in zip(_flat(before), _flat(after)):
        error = (old.float() - new.float()).abs().max()
        if error > rtol * old.float().abs().max().clamp(min=1e-6):
            raise RuntimeError(f"{what} changed the output by {float(error):.3g}")


def _post_op(act: nn.Module) -> tuple[str, list[float]] | None:
    """oneDNN's name and scalars for an in-place activation, or None. In place, the activation overwrote the
    convolution's output, so nothing else can have read it: fusing them changes no other consumer."""
    if not getattr(act, "inplace", False):
        return None
    if type(act) is nn.ReLU:
        return "relu", []
    if isinstance(act, nn.Hardtanh):
        return "hardtanh", [float(act.min_val), float(act.max_val)]
    if type(act) is nn.SiLU:
        return "swish", []
    return None


class ConvActivation(nn.Module):
    """A convolution with its activation as a oneDNN post-op (CPU, inference only). Under CPU autocast it
    computes in the autocast type, as the convolution did, with the weights cast once per type."""

    def __init__(self, conv: nn.Conv2d, post_op: str, scalars: list[float]) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.same = isinstance(conv, Conv2dSame)
        self.kernel, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.padding = (0, 0) if self.same else conv.padding
        self.groups, self.post_op, self.scalars = conv.groups, post_op, scalars
        self._cast: dict[torch.dtype, tuple[Tensor, Tensor | None]] = {}

    def _weights(self, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        if dtype == self.weight.dtype:
            return self.weight, self.bias
        if dtype not in self._cast:
            bias = None if self.bias is None else self.bias.detach().to(dtype)
            self._cast[dtype] = (self.weight.detach().to(dtype), bias)
        return self._cast[dtype]

    def forward(self, x: Tensor) -> Tensor:
        if self.same:
            x = pad_same(x, list(self.kernel), list(self.stride), list(self.dilation))
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        weight, bias = self._weights(dtype)
        return torch.ops.mkldnn._convolution_pointwise(x.to(dtype), weight, bias, list(self.padding),
                                                       list(self.stride), list(self.dilation), self.groups,
                                                       self.post_op, self.scalars, "")


def _fusible(conv: nn.Module) -> bool:
    """Plain zero-padded convolutions (timm's dynamic 'same' padding included), whose forward is known."""
    plain = type(conv) is nn.Conv2d and not isinstance(conv.padding, str) and conv.padding_mode == "zeros"
    return plain or type(conv) is Conv2dSame


def fuse_conv_activations(model: nn.Module, example: Tensor, rtol: float = 1e-3) -> int:
    """Replace every convolution followed only by an in-place ReLU, ReLU6 or SiLU with one ``ConvActivation``,
    in place; returns how many. For inference on a CPU with oneDNN (``torch.backends.mkldnn``): call it last,
    after folding norms and choosing the memory format. Checked against the unfused output like
    ``fold_batch_norms``."""
    if model.training:
        raise ValueError("fuse_conv_activations needs a model in eval mode")
    if not torch.backends.mkldnn.is_available():
        return 0
    found, before = _conv_pairs(model, example, ACTIVATIONS)
    pairs = [(conv, act, _post_op(act)) for conv, act in found]
    fused = [(conv, act, op) for conv, act, op in pairs if op is not None and _fusible(conv)]
    for conv, act, (post_op, scalars) in fused:
        _replace(model, conv, ConvActivation(conv, post_op, scalars))
        _replace(model, act, nn.Identity())
    _check_unchanged(model, example, before, rtol, "fusing activations")
    return len(fused)


def _flat(output: Tensor | dict | list | tuple) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    values = output.values() if isinstance(output, dict) else output
    return [t for value in values for t in _flat(value)]
