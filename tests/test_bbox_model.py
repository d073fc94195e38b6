"""The detector network: every config builds offline, batched box selection matches torchvision's."""
from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign, batched_nms

from dataset.boxes import ASPECT_TEMPLATES, aspect_group
from bbox_sub.config import DETECTOR_CONFIGS, SEED_FRAMES, load_detector_config
from bbox_sub.model import ChannelsLastMLPHead, build_detector
from bbox_sub.postprocess import dense_nms
from dataset.config import ConfigError

pytestmark = pytest.mark.cpu_kernels


@pytest.mark.parametrize("name", ["seed_vovnet99", "vovnet39", "lite2", "lite0", "tiny"])
def test_every_config_builds_offline(name: str) -> None:
    cfg = load_detector_config(name)
    model = build_detector(cfg.model)
    assert model.backbone.out_channels == cfg.model.fpn_channels
    assert name in DETECTOR_CONFIGS.names()


def test_seed_config_holds_the_seed_numbers() -> None:
    cfg = load_detector_config("seed_vovnet99")
    m = cfg.model
    assert (m.backbone, m.fpn_channels, m.anchor_sizes, m.aspect_ratios) == (
        "ese_vovnet99b", 256, (32, 64, 128, 256, 512), (0.5, 1.0, 2.0))
    assert (m.rpn_pre_nms_top_n_train, m.rpn_pre_nms_top_n_test, m.rpn_post_nms_top_n_test) == (2000, 1000, 1000)
    assert (m.roi_batch_size_per_image, m.roi_positive_fraction, m.box_nms_thresh, m.detections_per_img) == (
        512, 0.25, 0.5, 100)
    assert [s.iterations for s in cfg.train.stages] == [60000, 60000, 125000]
    assert cfg.infer.frames == SEED_FRAMES == tuple(range(80, 400, 20))
    scaled = load_detector_config("seed_vovnet99", ["train.iteration_scale=0.01"]).train
    first = scaled.scaled(scaled.stages[0])
    assert (first.iterations, first.warmup_iters, first.milestones) == (600, 10, (600,))


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="model.fpn_chanels"):
        load_detector_config("tiny", ["model.fpn_chanels=32"])
    with pytest.raises(ConfigError, match="anchor_sizes"):
        load_detector_config("tiny", ["model.anchor_sizes=[32, 64]"])


def test_tiny_forward_eval_and_train() -> None:
    torch.manual_seed(0)
    model = build_detector(load_detector_config("tiny").model)
    images = [torch.rand(3, 96, 128) * 255, torch.rand(3, 128, 100) * 255]
    model.eval()
    with torch.no_grad():
        out = model(model.preprocess(images))
    assert len(out) == 2 and all(o["boxes"].shape[1] == 4 and len(o["scores"]) <= 100 for o in out)
    assert all(bool((o["boxes"][:, 2] <= w).all() and (o["boxes"][:, 3] <= h).all())
               for o, (h, w) in zip(out, [(96, 128), (128, 100)]))
    model.train()
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 80.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model(model.preprocess(images), targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}


def _rpn_case() -> tuple:
    torch.manual_seed(0)
    rpn = build_detector(load_detector_config("tiny").model).rpn.eval()
    levels = [600, 150, 40, 12, 4]
    num_images = 5
    xy = torch.rand(num_images, sum(levels), 2) * 200
    wh = torch.rand(num_images, sum(levels), 2) * 80 + 1
    proposals = torch.cat([xy, xy + wh], -1)
    objectness = torch.randn(num_images * sum(levels), 1)
    shapes = [(180, 200), (200, 150)] * 2 + [(160, 160)]
    reference = RegionProposalNetwork.filter_proposals(rpn, proposals, objectness, shapes, levels)
    return rpn, (proposals, objectness, shapes, levels), reference


def test_batched_rpn_selection_matches_torchvision() -> None:
    rpn, inputs, reference = _rpn_case()
    rpn.nms_chunk = 2  # several chunks, one of them partial
    ours = rpn.filter_proposals(*inputs)
    for mine, theirs in zip(ours, reference):
        for a, b in zip(mine, theirs):
            assert torch.equal(a, b)


@pytest.mark.parametrize("score_thresh", [0.0, 0.4])
def test_dense_rpn_selection_matches_torchvision(score_thresh: float) -> None:
    """The fixed-shape path CUDA takes, run here on CPU (some levels have fewer anchors than the top-k)."""
    rpn, inputs, _ = _rpn_case()
    rpn.score_thresh = score_thresh
    reference = RegionProposalNetwork.filter_proposals(rpn, *inputs)
    ours = rpn.filter_proposals_dense(*inputs)
    for mine, theirs in zip(ours, reference):
        assert [len(t) for t in mine] == [len(t) for t in theirs]
        for a, b in zip(mine, theirs):
            assert torch.equal(a, b)


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("path", ["postprocess_detections", "postprocess_detections_dense"])
def test_batched_detection_selection_matches_torchvision(path: str, classes: int) -> None:
    """Both paths, on CPU: the compacting one CPU takes and the fixed-shape one CUDA takes (the garment
    detector has one class plus background; the selection is written for any number)."""
    torch.manual_seed(0)
    heads = build_detector(load_detector_config("tiny").model).roi_heads.eval()
    heads.score_thresh = 0.3
    heads.detections_per_img = 20
    proposals = [torch.cat([xy, xy + torch.rand(n, 2) * 60 + 2], 1) for n, xy in
                 ((50, torch.rand(50, 2) * 100), (0, torch.zeros(0, 2)), (80, torch.rand(80, 2) * 100))]
    logits = torch.randn(130, classes)
    regression = torch.randn(130, 4 * classes) * 0.1
    shapes = [(120, 130), (100, 100), (140, 110)]
    ours = getattr(heads, path)(logits, regression, proposals, shapes)
    reference = RoIHeads.postprocess_detections(heads, logits, regression, proposals, shapes)
    for mine, theirs in zip(ours, reference):
        assert [len(t) for t in mine] == [len(t) for t in theirs]
        for a, b in zip(mine, theirs):
            assert torch.equal(a, b)


def test_levelwise_box_features_match_torchvision() -> None:
    """Pooling and the box head one FPN level at a time give torchvision's RoI head output, with RoIs of
    several sizes (two or more levels used, one left empty) and an image without RoIs, in eval mode."""
    torch.manual_seed(0)
    model = build_detector(load_detector_config("tiny").model).eval()
    heads = model.roi_heads
    heads.score_thresh = 0.05
    shapes = [(256, 320), (256, 320), (256, 320)]
    features = model.backbone(torch.rand(3, 3, 256, 320))
    small = torch.rand(40, 2) * 200
    large = torch.rand(20, 2) * 40
    proposals = [torch.cat([small, small + torch.rand(40, 2) * 40 + 4], 1),
                 torch.zeros(0, 4),
                 torch.cat([large, large + torch.rand(20, 2) * 200 + 60], 1)]
    with torch.inference_mode():
        ours = heads.box_features(features, proposals, shapes)
        theirs = heads.box_head(MultiScaleRoIAlign.forward(heads.box_roi_pool, features, proposals, shapes))
        assert torch.allclose(ours, theirs, atol=1e-6)
        levels = heads.box_roi_pool.map_levels(proposals)
        assert len(torch.unique(levels)) >= 2 and len(torch.unique(levels)) < len(heads.box_roi_pool.scales)
        detected, _ = heads(features, proposals, shapes)
        reference, _ = RoIHeads.forward(heads, features, proposals, shapes)
    for mine, theirs in zip(detected, reference):
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert torch.allclose(mine[key].float(), theirs[key].float(), atol=1e-4)


def test_box_head_reads_channels_last_rois_as_they_are() -> None:
    """RoIs pooled in channels_last order give what their (C, y, x) copy gives, in float32 and bf16; the
    reordered fc6 follows new weights, and training takes torchvision's path, with its gradients."""
    torch.manual_seed(0)
    head = ChannelsLastMLPHead(16 * 7 * 7, 32).eval()
    pooled = torch.randn(5, 7, 7, 16).permute(0, 3, 1, 2)  # channels_last, as roi_gather pools
    with torch.inference_mode():
        assert torch.allclose(head(pooled), head(pooled.contiguous()), atol=1e-5)
        with torch.autocast("cpu", torch.bfloat16):
            low = head(pooled)
        assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), head(pooled), atol=0.05, rtol=0.05)
        head.load_state_dict({k: torch.randn_like(v) for k, v in head.state_dict().items()})
        assert torch.allclose(head(pooled), head(pooled.contiguous()), atol=1e-4)
        assert head(pooled[:0]).shape == (0, 32)
    head.train()
    head(pooled).sum().backward()
    assert head.fc6.weight.grad is not None and head.fc6.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("max_pairs", [1 << 26, 5000])
def test_dense_nms_is_greedy_nms(max_pairs: int) -> None:
    """Clustered boxes (long suppression chains), uneven groups, and slices of groups when pairs are bounded."""
    generator = torch.Generator().manual_seed(1)
    centres = torch.rand(30, 2, generator=generator) * 300
    owner = torch.randint(0, 30, (900,), generator=generator)
    xy = centres[owner] + torch.randn(900, 2, generator=generator) * 6
    wh = torch.rand(900, 2, generator=generator) * 40 + 10
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(900, generator=generator)
    groups = torch.randint(0, 7, (900,), generator=generator) ** 2  # sparse group ids, one group far larger
    for threshold in (0.3, 0.5, 0.7):
        ours = dense_nms(boxes, scores, groups, threshold, max_pairs=max_pairs)
        assert torch.equal(ours, batched_nms(boxes, scores, groups, threshold))


def test_aspect_groups_follow_the_seed_templates() -> None:
    assert len(ASPECT_TEMPLATES) == 12
    assert aspect_group([0, 0, 100, 100]) == 7
    assert aspect_group([0, 0, 10, 100]) == 0
    assert aspect_group([0, 0, 300, 100]) == 11
    assert aspect_group(0.57) == 4


@pytest.mark.parametrize("name", ["lite0", "tiny"])
def test_freeze_at_stops_gradients_through_the_first_stages(name: str) -> None:
    """detectron2's FREEZE_AT on a timm backbone: the frozen prefix grows with each level and gets no gradient."""
    frozen = []
    for freeze_at in range(6):
        model = build_detector(load_detector_config(name, [f"model.freeze_at={freeze_at}"]).model)
        body = model.backbone.body
        flags = [p.requires_grad for p in body.parameters()]
        count = flags.count(False)
        assert flags == [False] * count + [True] * (len(flags) - count)  # a prefix, in the order layers run
        frozen.append(count)
    assert frozen[0] == 0 and all(a < b for a, b in zip(frozen, frozen[1:]))
    model = build_detector(load_detector_config(name, ["model.freeze_at=2"]).model).train()
    images = model.preprocess([torch.rand(3, 96, 128) * 255], False)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0]]), "labels": torch.tensor([1])}]
    sum(model(images, targets).values()).backward()
    params = list(model.backbone.body.parameters())
    assert all(p.grad is None for p in params[:frozen[2]]) and all(p.grad is not None for p in params[frozen[2]:])
    with pytest.raises(ConfigError):
        load_detector_config(name, ["model.freeze_at=-1"])
