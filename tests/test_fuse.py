"""Folding batch norms into convolutions, and activations on a CPU, keeps every stage's output."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.norm_act import BatchNormAct2d
from torch import nn

from bbox_sub.config import load_detector_config
from bbox_sub.detect import BatchDetector
from bbox_sub.model import build_detector
from metric_sub.config import load_embedder_config
from metric_sub.model import build_embedder
from runtime.fuse import NORMS, ConvActivation, fold_batch_norms, fuse_conv_activations
from runtime.precision import autocast, autocast_dtype
from tests.support import seeded_tiny_detector

pytestmark = pytest.mark.cpu_kernels

CPU = torch.device("cpu")


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


class _Activations(nn.Module):
    """Each kind of convolution + activation pair (one pair run twice, as the RPN head runs per FPN level), and
    the three that must stay apart: an activation not in place, one that follows two different convolutions,
    and a convolution whose output also feeds a sum."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.norm_act = BatchNormAct2d(8, act_layer=nn.ReLU6)  # folds to the stem's bias, then ReLU6
        self.same = Conv2dSame(8, 8, 3, stride=2, groups=8)
        self.silu = nn.SiLU(inplace=True)
        self.point = nn.Conv2d(8, 8, 1)
        self.relu = nn.ReLU(inplace=True)
        self.kept = nn.Conv2d(8, 8, 1)
        self.not_in_place = nn.ReLU()
        self.twice = nn.Conv2d(8, 8, 1)
        self.twice_act = nn.ReLU(inplace=True)
        self.left, self.right = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.shared = nn.ReLU(inplace=True)
        self.summed = nn.Conv2d(8, 8, 1)
        self.summed_act = nn.Hardtanh(-1.0, 1.0, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.point(self.silu(self.same(self.norm_act(self.stem(x))))))
        x = self.not_in_place(self.kept(x))
        x = self.twice_act(self.twice(x)) + self.twice_act(self.twice(x * 0.5))
        x = self.shared(self.left(x)) + self.shared(self.right(x))
        y = self.summed(x)
        return y + self.summed_act(y.clone())


def test_each_activation_kind_fuses_and_shared_or_copying_ones_stay() -> None:
    model = _trained_looking(_Activations())
    images = torch.rand(2, 3, 33, 47)  # odd sizes: 'same' padding on one side only
    fold_batch_norms(model, torch.rand(1, 3, 16, 16))
    with torch.no_grad():
        before = model(images)
    assert fuse_conv_activations(model, torch.rand(1, 3, 16, 16)) == 4
    assert [type(m) for m in (model.stem, model.same, model.point, model.twice)] == [ConvActivation] * 4
    assert [type(m) for m in (model.kept, model.left, model.right, model.summed)] == [nn.Conv2d] * 4
    with torch.no_grad():
        assert _close(before, model(images))


def test_fused_convolutions_follow_cpu_autocast() -> None:
    """Under the autocast the product picks for this CPU: bf16 where it has bf16, float32 elsewhere."""
    expected = autocast_dtype(CPU, "bf16") or torch.float32
    model = _trained_looking(_Activations())
    fold_batch_norms(model, torch.rand(1, 3, 16, 16))
    images = torch.rand(2, 3, 33, 47)
    with torch.no_grad(), autocast(CPU, "bf16"):
        before = model(images)
    fuse_conv_activations(model, torch.rand(1, 3, 16, 16))
    with torch.no_grad(), autocast(CPU, "bf16"):
        after = model(images)
    assert after.dtype == before.dtype == expected
    assert (after.float() - before.float()).abs().max() <= 0.02 * before.float().abs().max()


def _matched(ours: np.ndarray, theirs: np.ndarray, tolerance: float) -> bool:
    """Whether the rows of ``ours`` pair one to one with rows of ``theirs`` within ``tolerance``, in any order.

    Detections with near-equal scores may come out in another order when the
    arithmetic differs in its last bits, so rows are matched, not compared in place.
    """
    unused = list(range(len(theirs)))
    for row in ours:
        close = [j for j in unused if np.abs(theirs[j] - row).max() < tolerance]
        if not close:
            return False
        unused.remove(close[0])
    return not unused


def test_fused_detector_finds_the_unfused_boxes() -> None:
    """The whole CPU inference path (backbone, FPN and RPN head fused) against the same model unfused."""
    fused = BatchDetector(seeded_tiny_detector(), CPU, precision="fp32")
    plain = BatchDetector(seeded_tiny_detector(), CPU, precision="fp32", fuse=False)
    assert any(isinstance(m, ConvActivation) for m in fused.model.backbone.modules())
    assert any(isinstance(m, ConvActivation) for m in fused.model.rpn.head.modules())
    frames = [torch.randint(0, 256, (160, 96, 3), generator=torch.Generator().manual_seed(i),
                            dtype=torch.uint8).numpy() for i in range(2)]
    for ours, theirs in zip(fused(frames, 128, 256), plain(frames, 128, 256)):
        assert ours.boxes.shape == theirs.boxes.shape and len(ours.boxes) > 0
        assert np.abs(np.sort(ours.scores) - np.sort(theirs.scores)).max() < 1e-4
        # Scores weigh 100x in the match, so a box pairs only with one of (almost) its own score.
        rows = [np.column_stack([d.boxes, d.scores * 100]) for d in (ours, theirs)]
        assert _matched(rows[0], rows[1], 1e-2)


def test_fusing_refuses_training_mode() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fuse_conv_activations(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(inplace=True)), torch.rand(1, 3, 8, 8))
