"""The detector benchmark times the work a trained detector does: norm calibration and the proposal count."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from bbox_sub.config import load_detector_config
from bbox_sub.detect import BatchDetector
from bbox_sub.model import build_detector
from bench.detect import ProposalCount, calibrate_norms, noise_frames, untrained_detector

CPU = torch.device("cpu")


def test_calibrated_norms_normalise_their_own_input() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          FrozenBatchNorm2d(8)).eval()
    images = torch.randn(4, 3, 24, 24) * 1000 + 5
    calibrate_norms(model, lambda: model(images))
    with torch.no_grad():
        hidden = model[1](model[0](images))
        out = model(images)
    for normalised in (hidden, out):
        assert normalised.mean((0, 2, 3)).abs().max() < 1e-3
        assert (normalised.var((0, 2, 3)) - 1).abs().max() < 1e-2


def _proposals(model: nn.Module) -> float:
    detector = BatchDetector(model, CPU, precision="fp32")
    count = ProposalCount(detector.model.roi_heads)
    detector(noise_frames(1), 608, 4000)
    return count.per_picture


def test_untrained_vovnet99_proposes_only_once_calibrated() -> None:
    """Random VoVNet-99 activations grow so large that every RPN box degenerates; calibrated, the RoI head
    gets the configured count, as from a trained model."""
    cfg = load_detector_config("seed_vovnet99").model
    torch.manual_seed(0)
    assert _proposals(build_detector(cfg)) == 0
    torch.manual_seed(0)
    assert _proposals(untrained_detector(cfg, noise_frames(1), CPU)) == cfg.rpn_post_nms_top_n_test
