"""The CUDA paths give the CPU's answers: same features and box selection in the detector, same vectors
from the embedder.

Skipped where no GPU is present (CI); run on a CUDA machine with
``CUDA_VISIBLE_DEVICES=0 python -m pytest tests/test_cuda_agreement.py`` (the test
suite hides GPUs unless told otherwise). TF32 is switched off for
the float32 comparisons so that both devices do true float32 arithmetic.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bbox_sub.detect import BatchDetector
from metric_sub.config import load_embedder_config
from metric_sub.embed import ModelRunner
from metric_sub.model import build_embedder
from runtime.precision import true_fp32
from support import seeded_tiny_detector

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def without_tf32():
    with true_fp32():
        yield


def test_backbone_features_agree() -> None:
    """Backbone + FPN in float32, batch norms folded on both sides."""
    images = torch.rand(2, 3, 256, 448)
    cpu = BatchDetector(seeded_tiny_detector(), CPU, precision="fp32").model.backbone(images)
    gpu = BatchDetector(seeded_tiny_detector(), CUDA, precision="fp32").model.backbone(images.cuda())
    for level in cpu:
        scale = cpu[level].abs().max()
        assert (gpu[level].cpu() - cpu[level]).abs().max() <= 1e-3 * scale


def test_proposal_selection_agrees() -> None:
    """The RPN's batched selection (dense NMS on CUDA, torchvision's batched NMS on CPU) keeps the same proposals.

    Scores are drawn well apart: with a random network they crowd within 1e-5
    of each other, where any two devices may order them differently.
    """
    rpn = seeded_tiny_detector().rpn
    generator = torch.Generator().manual_seed(0)
    levels = [600, 150, 40, 12, 4]
    xy = torch.rand(3, sum(levels), 2, generator=generator) * 200
    proposals = torch.cat([xy, xy + torch.rand(3, sum(levels), 2, generator=generator) * 80 + 1], -1)
    objectness = torch.randperm(3 * sum(levels), generator=generator).float()[:, None] / 3000 - 1
    shapes = [(180, 200), (200, 150), (160, 160)]
    cpu = rpn.filter_proposals(proposals, objectness, shapes, levels)
    gpu = rpn.cuda().filter_proposals(proposals.cuda(), objectness.cuda(), shapes, levels)
    for mine, theirs in zip(cpu, gpu):
        for a, b in zip(mine, theirs):
            assert a.shape == b.shape
            assert torch.allclose(a, b.cpu(), atol=1e-4)


def test_detection_selection_agrees() -> None:
    heads = seeded_tiny_detector().roi_heads
    heads.score_thresh = 0.3
    generator = torch.Generator().manual_seed(0)
    proposals = [torch.cat([xy, xy + torch.rand(n, 2, generator=generator) * 60 + 2], 1)
                 for n, xy in ((300, torch.rand(300, 2, generator=generator) * 100),
                               (500, torch.rand(500, 2, generator=generator) * 150))]
    logits = torch.stack([torch.zeros(800), torch.randperm(800, generator=generator).float() / 100 - 2], 1)
    regression = torch.randn(800, 8, generator=generator) * 0.1
    shapes = [(120, 130), (180, 170)]
    cpu = heads.postprocess_detections(logits, regression, proposals, shapes)
    gpu = heads.cuda().postprocess_detections(logits.cuda(), regression.cuda(), [p.cuda() for p in proposals],
                                              shapes)
    for mine, theirs in zip(cpu, gpu):
        for a, b in zip(mine, theirs):
            assert a.shape == b.shape
            assert torch.allclose(a.float(), b.cpu().float(), atol=1e-4)


@pytest.mark.parametrize("dtype, min_cosine", [("fp32", 0.9999), ("bf16", 0.99)])
def test_embeddings_agree(dtype: str, min_cosine: float) -> None:
    config = load_embedder_config("tiny", [f"embed.dtype={dtype}"])
    rng = np.random.default_rng(1)
    width, height = config.bucket_sizes()[4]
    crops = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(6)]
    torch.manual_seed(0)
    model = build_embedder(config)
    cpu = ModelRunner(config, model, CPU).embed_crops(crops, [4] * len(crops))
    gpu = ModelRunner(config, model, CUDA).embed_crops(crops, [4] * len(crops))
    assert np.allclose(np.linalg.norm(gpu, axis=1), 1.0, atol=1e-4)
    assert (cpu * gpu).sum(axis=1).min() >= min_cosine
