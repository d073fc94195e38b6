"""The CPU RoI align gather gives torchvision's roi_align, edges and all."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from bbox_sub import roi_gather
from bbox_sub.model import LevelRoIAlign
from bbox_sub.roi_gather import roi_align_gather

pytestmark = pytest.mark.cpu_kernels


def _rois(count: int, images: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Boxes of every kind: inside, straddling each edge, past the far edges, and thinner than a pixel."""
    owner = torch.randint(0, images, (count, 1), generator=generator).float()
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([width + 8.0, height + 8.0]) - 4
    size = torch.rand(count, 2, generator=generator) * 30
    size[: count // 10] *= 0.02
    return torch.cat([owner, corner, corner + size], 1)


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("ratio", [1, 2, 3])
def test_gather_is_roi_align(scale: float, ratio: int) -> None:
    generator = torch.Generator().manual_seed(0)
    feature = torch.randn(3, 16, 40, 30, generator=generator)
    rois = _rois(400, 3, int(40 / scale), int(30 / scale), generator)
    expected = roi_align(feature, rois, (7, 5), scale, ratio)
    for layout in (torch.contiguous_format, torch.channels_last):
        got = roi_align_gather(feature.contiguous(memory_format=layout), rois, (7, 5), scale, ratio)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-4)  # float32 sums in another order


def test_chunks_and_empty_input(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(1)
    feature = torch.randn(2, 8, 20, 20, generator=generator)
    rois = _rois(50, 2, 20, 20, generator)
    whole = roi_align_gather(feature, rois, (7, 7), 1.0, 2)
    monkeypatch.setattr(roi_gather, "CHUNK", 7)
    assert torch.equal(roi_align_gather(feature, rois, (7, 7), 1.0, 2), whole)
    assert roi_align_gather(feature, rois[:0], (7, 7), 1.0, 2).shape == (0, 8, 7, 7)


def test_bf16_features_pool_in_bf16_close_to_float32() -> None:
    generator = torch.Generator().manual_seed(2)
    feature = torch.randn(2, 32, 24, 24, generator=generator)
    rois = _rois(100, 2, 48, 48, generator)
    expected = roi_align(feature, rois, (7, 7), 0.5, 2)
    got = roi_align_gather(feature.bfloat16().contiguous(memory_format=torch.channels_last), rois, (7, 7), 0.5, 2)
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected).abs().max() < 0.05 * expected.abs().max()


def test_adaptive_sampling_is_refused() -> None:
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align_gather(torch.zeros(1, 4, 8, 8), torch.zeros(1, 5), (7, 7), 1.0, 0)


def test_multilevel_pooling_and_its_gradient_are_torchvisions() -> None:
    """What training backpropagates through: every level's RoIs scattered back in order, and the feature
    gradients of the gather equal those of torchvision's kernel."""
    generator = torch.Generator().manual_seed(3)
    pool = LevelRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2)
    sizes = [(512, 384), (512, 384)]
    features = {str(level): torch.randn(2, 8, 128 >> level, 96 >> level, generator=generator, requires_grad=True)
                for level in range(3)}

    def boxes(count: int, low: float, high: float) -> torch.Tensor:
        corner = torch.rand(count, 2, generator=generator) * 150
        return torch.cat([corner, corner + low + torch.rand(count, 2, generator=generator) * (high - low)], 1)

    proposals = [torch.cat([boxes(20, 4, 40), boxes(10, 100, 140)]), torch.cat([boxes(5, 4, 40), boxes(5, 200, 300)])]
    upstream = torch.randn(40, 8, 7, 7, generator=generator)
    results = []
    for forward in (pool.forward, lambda *a: MultiScaleRoIAlign.forward(pool, *a)):
        pooled = forward(features, proposals, sizes)
        grads = torch.autograd.grad((pooled * upstream).sum(), list(features.values()))
        results.append((pooled, grads))
    (ours, our_grads), (theirs, their_grads) = results
    assert len(torch.unique(pool.map_levels(proposals))) == 3
    assert torch.allclose(ours, theirs, atol=1e-4)
    for mine, reference in zip(our_grads, their_grads):
        assert torch.allclose(mine, reference, atol=1e-4)
