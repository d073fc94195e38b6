"""Folding batch norms into convolutions keeps every stage's output and leaves no norm behind."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bbox_sub.config import load_detector_config
from bbox_sub.model import build_detector
from dataset.fuse import NORMS, fold_batch_norms
from metric_sub.config import load_embedder_config
from metric_sub.model import build_embedder


def _trained_looking(model: nn.Module) -> nn.Module:
    """Norm statistics away from their initial values, so a wrong fold would show."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, NORMS):
            count = module.running_mean.numel()
            module.running_mean.copy_(torch.rand(count, generator=generator) * 0.4 - 0.2)
            module.running_var.copy_(torch.rand(count, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(count, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(count, generator=generator) * 0.2 - 0.1)
    return model.eval()


def _close(old: torch.Tensor, new: torch.Tensor) -> bool:
    """Equal up to float32 rounding, relative to the output's scale (random deep nets reach 1e5)."""
    return bool((old - new).abs().max() <= 1e-4 * old.abs().max())


def _norms(model: nn.Module) -> int:
    return sum(isinstance(m, NORMS) for m in model.modules())


@pytest.mark.parametrize("name", ["tiny", "seed_vovnet99"])  # plain and frozen batch norm
def test_detector_backbone_folds(name: str) -> None:
    body = _trained_looking(build_detector(load_detector_config(name).model).backbone.body)
    images = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        before = body(images)
    folded = fold_batch_norms(body, torch.rand(1, 3, 64, 64))
    assert folded > 0 and _norms(body) == 0
    with torch.no_grad():
        for old, new in zip(before, body(images)):
            assert _close(old, new)


@pytest.mark.parametrize("name", ["tiny", "lite0"])
def test_embedder_backbone_folds(name: str) -> None:
    model = _trained_looking(build_embedder(load_embedder_config(name)))
    images = torch.randint(0, 256, (2, 3, 80, 64), dtype=torch.uint8)
    with torch.no_grad():
        before = model(images)
    fold_batch_norms(model.backbone, torch.rand(1, 3, 64, 64))
    assert _norms(model.backbone) == 0
    with torch.no_grad():
        assert _close(before, model(images))


def test_a_norm_whose_input_is_shared_is_left_alone() -> None:
    """The convolution's output also feeds the residual sum, so folding the norm would change the result."""

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    model = _trained_looking(Residual())
    with pytest.raises(RuntimeError, match="changed the output"):
        fold_batch_norms(model, torch.rand(1, 3, 16, 16))


def test_training_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)), torch.rand(1, 3, 8, 8))
