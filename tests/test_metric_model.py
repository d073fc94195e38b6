"""The embedder network, its configs, the ArcFace head and the offline ImageNet initialisation."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from dataset.config import ConfigError
from dataset.images import read_image
from metric_sub.config import CONFIG_DIR, load_embedder_config
from metric_sub.model import ArcFaceHead, build_embedder
from runtime.pretrained import load_lite_weights

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

EXPECTED = {  # config: (neck input width, learnable p, xbm)
    "seed_b5a": (2048, False, None), "seed_b5b": (2048, False, None), "seed_b6": (2304, True, 256),
    "seed_b7": (2560, False, 512), "lite0": (1280, False, None), "lite1": (1280, False, None),
    "lite2": (1280, False, None), "tiny": (1280, False, None),
}


def test_every_bundled_config_is_covered() -> None:
    embedders = [p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "match"]  # match.yaml: the voting rules
    assert sorted(embedders) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_builds_offline(name: str) -> None:
    config = load_embedder_config(name)
    model = build_embedder(config)
    width, learnable, xbm = EXPECTED[name]
    assert model.neck.in_features == width and model.neck.bias is None
    assert model.neck.out_features == model.bottleneck.num_features == config.model.embedding_size
    assert isinstance(model.pool.p, torch.nn.Parameter) == learnable
    assert config.loss.xbm == xbm and config.loss.scale == 30 and config.loss.margin == pytest.approx(0.30)
    assert not hasattr(model.backbone, "classifier") or isinstance(model.backbone.classifier, torch.nn.Identity)


def test_lite_config_starts_from_imagenet_weights() -> None:
    model = build_embedder(load_embedder_config("lite0"))
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0, global_pool="")
    load_lite_weights(reference, 0)
    for key, tensor in reference.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], tensor), key


def test_untrained_lite_embedder_is_the_same_in_every_process() -> None:
    """Zero-shot retrieval uses the ImageNet trunk and the initial neck: neither may follow the global seed."""
    config = load_embedder_config("lite0")
    images = torch.randint(0, 256, (2, 3, 96, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    outputs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        outputs.append(build_embedder(config).eval().embed(images))
    assert torch.equal(outputs[0], outputs[1])


def test_without_conv_head_the_untrained_embedder_keeps_the_last_block_cosines() -> None:
    """``model.conv_head: false``: GeM pools the last block's maps, and the neck, no wider than its output,
    starts as an isometry, so an untrained model's cosines are those of the pooled ImageNet features."""
    config = load_embedder_config("lite0", ["model.conv_head=false"])
    model = build_embedder(config).eval()
    assert model.neck.in_features == 320
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0, global_pool="")
    load_lite_weights(reference, 0)
    reference.eval()
    images = torch.randint(0, 256, (4, 3, 96, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        maps = reference.blocks(reference.bn1(reference.conv_stem(model.normalise(images))))
        pooled = F.normalize(model.pool(maps), dim=1)
    embedded = model.embed(images)
    assert torch.allclose(embedded @ embedded.T, pooled @ pooled.T, atol=1e-5)


@pytest.mark.parametrize(("setting", "trained", "width"), [
    ("null", False, 320), ("null", True, 1280), ("true", False, 1280), ("false", True, 320)])
def test_conv_head_by_default_is_kept_when_trained_and_dropped_for_zero_shot(setting: str, trained: bool,
                                                                              width: int) -> None:
    config = load_embedder_config("lite0", [f"model.conv_head={setting}"])
    assert build_embedder(config, trained=trained).neck.in_features == width


def test_a_zero_shot_runner_pools_the_last_block() -> None:
    from metric_sub.embed import load_runner

    runner = load_runner(load_embedder_config("lite0"), None, torch.device("cpu"))
    assert runner.model.neck.in_features == 320


def test_conv_head_false_needs_a_backbone_that_has_one() -> None:
    config = load_embedder_config("tiny", ["model.backbone=resnet18", "model.conv_head=false"])
    with pytest.raises(ValueError, match="resnet18.*has none"):
        build_embedder(config)


def test_bad_config_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loss.scale"):
        load_embedder_config("tiny", ["loss.scale=-1"])
    with pytest.raises(ConfigError, match="model"):
        load_embedder_config("tiny", ["model.init=lite"])


def test_embeddings_are_unit_norm_and_deterministic() -> None:
    config = load_embedder_config("tiny")
    torch.manual_seed(0)
    model = build_embedder(config).eval()
    width, height = config.bucket_sizes()[7]
    images = torch.randint(0, 256, (5, 3, height, width), dtype=torch.uint8)
    first, second = model.embed(images), model.embed(images)
    assert torch.equal(first, second)
    assert torch.allclose(first.norm(dim=1), torch.ones(5), atol=1e-5)
    single = model.embed(images[:1])  # eval-mode BN: a row does not depend on its batch
    assert torch.allclose(single, first[:1], atol=1e-5)


def _seed_arcface(embeddings: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                  s: float, m: float) -> torch.Tensor:
    """The seed's loss.py formula, written out independently."""
    cosine = F.normalize(embeddings) @ F.normalize(weight).T
    sine = (1 - cosine**2).clamp(min=0).sqrt()
    phi = cosine * math.cos(m) - sine * math.sin(m)
    phi = torch.where(cosine > math.cos(math.pi - m), phi, cosine - math.sin(math.pi - m) * m)
    target = F.one_hot(labels, weight.shape[0]).bool()
    return F.cross_entropy(torch.where(target, phi, cosine) * s, labels)


def test_arcface_margin_is_in_radians_like_the_seed() -> None:
    config = load_embedder_config("tiny")
    torch.manual_seed(0)
    head = ArcFaceHead(config.loss, num_classes=7, embedding_size=16)
    embeddings, labels = torch.randn(12, 16), torch.randint(0, 7, (12,))
    expected = _seed_arcface(embeddings, head.arcface.W.T, labels, 30.0, 0.30)
    assert head(embeddings, labels).item() == pytest.approx(expected.item(), rel=1e-4)


def test_cross_batch_memory_adds_rows_and_restores_its_position() -> None:
    config = load_embedder_config("seed_b6", ["model.embedding_size=8"])
    head = ArcFaceHead(config.loss, num_classes=5, embedding_size=8)
    assert head.memory is not None and head.memory.memory_size == 256
    for _ in range(3):
        head(torch.randn(4, 8), torch.randint(0, 5, (4,)))
    assert head.memory.queue_idx == 12 and not head.memory.has_been_filled
    restored = ArcFaceHead(config.loss, num_classes=5, embedding_size=8)
    restored.load_state_dict(head.state_dict())
    assert restored.memory.queue_idx == 12
    assert torch.equal(restored.memory.embedding_memory, head.memory.embedding_memory)
    # The memory only reaches the class weights: the current batch gets the same gradient with it.
    embeddings = torch.randn(4, 8, requires_grad=True)
    head(embeddings, torch.arange(4)).backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0


CLOTHING = {"abaya", "academic gown", "apron", "bikini", "bow tie", "brassiere", "cardigan", "cloak", "fur coat",
            "gown", "hoopskirt", "jean", "jersey", "kimono", "lab coat", "maillot", "military uniform", "miniskirt",
            "overskirt", "pajama", "poncho", "sarong", "suit", "sweatshirt", "swimming trunks", "trench coat",
            "vestment", "velvet", "wool", "stole", "feather boa", "sock", "bulletproof vest", "shoe shop",
            "ski mask", "bonnet", "cowboy hat", "sombrero", "mitten", "Christmas stocking", "bath towel", "jersey"}


@pytest.mark.parametrize("variant", [0, 2])
def test_lite_weights_classify_real_shop_images_as_clothing(variant: int) -> None:
    """Every tensor loading is not enough: a wrong channel order or normalisation would still load."""
    files = sorted((SHARED_DATA / "taobao_live_sample" / "image").glob("*/*.jpg"))
    if not files:
        pytest.skip("../shared/data/taobao_live_sample is not present")
    from timm.data import ImageNetInfo, resolve_data_config

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False).eval()
    load_lite_weights(model, variant)
    data = resolve_data_config({}, model=model)
    side = data["input_size"][1]
    import cv2

    images = np.stack([cv2.resize(read_image(f), (side, side), interpolation=cv2.INTER_AREA) for f in files])
    x = (images.astype(np.float32) / 255 - np.array(data["mean"], np.float32)) / np.array(data["std"], np.float32)
    with torch.no_grad():
        top5 = model(torch.from_numpy(x).permute(0, 3, 1, 2)).topk(5, dim=1).indices
    info = ImageNetInfo()
    names = [[info.index_to_description(int(i)).split(",")[0] for i in row] for row in top5]
    top1_share = np.mean([row[0] in CLOTHING for row in names])
    top5_share = np.mean([any(n in CLOTHING for n in row) for row in names])
    assert top1_share >= 0.75 and top5_share >= 0.95, names
