"""Importing the seed's pretrained weights: vovnet-detectron2 VoVNet-99 into the detector's timm backbone, timm and
TF-port EfficientNet releases into the embedder; wrong files fail naming the file and the first tensor."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bbox_sub.config import load_detector_config
from bbox_sub.model import build_detector
from bbox_sub.weights import import_detectron2, main as bbox_weights_main
from metric_sub.config import load_embedder_config
from metric_sub.model import build_embedder
from metric_sub.weights import import_efficientnet, main as metric_weights_main
from runtime.checkpoint import CheckpointError

V99 = {"stem": [64, 64, 128], "conv": [128, 160, 192, 224], "out": [256, 512, 768, 1024], "layers": 5,
       "blocks": [1, 3, 9, 3]}
V19_SLIM = {"stem": [64, 64, 128], "conv": [64, 80, 96, 112], "out": [112, 256, 384, 512], "layers": 3,
            "blocks": [1, 1, 1, 1]}
"""Stage specs of vovnet-detectron2's ``V-99-eSE`` and ``V-19-slim-eSE`` (vovnet/vovnet.py)."""


def detectron2_vovnet(spec: dict, prefix: str = "backbone.bottom_up.") -> dict[str, torch.Tensor]:
    """A state dict named as vovnet-detectron2's VoVNet names its modules (FrozenBN norms, an eSE in every OSA
    block), plus an ImageNet classifier; each tensor holds distinct random values."""
    generator = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def tensor(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    def conv_norm(name: str, cin: int, cout: int, kernel: int) -> None:
        state[f"{prefix}{name}/conv.weight"] = tensor(cout, cin, kernel, kernel)
        for param in ("weight", "bias", "running_mean", "running_var"):
            state[f"{prefix}{name}/norm.{param}"] = tensor(cout)

    stem = spec["stem"]
    conv_norm("stem.stem_1", 3, stem[0], 3)
    conv_norm("stem.stem_2", stem[0], stem[1], 3)
    conv_norm("stem.stem_3", stem[1], stem[2], 3)
    inputs = [stem[2], *spec["out"][:-1]]
    for i, (mid, out, blocks) in enumerate(zip(spec["conv"], spec["out"], spec["blocks"])):
        stage, cin = i + 2, inputs[i]
        for block in range(1, blocks + 1):
            module = f"stage{stage}.OSA{stage}_{block}"
            channels = cin
            for layer in range(spec["layers"]):
                conv_norm(f"{module}.layers.{layer}.OSA{stage}_{block}_{layer}", channels, mid, 3)
                channels = mid
            conv_norm(f"{module}.concat.OSA{stage}_{block}_concat", cin + spec["layers"] * mid, out, 1)
            state[f"{prefix}{module}.ese.fc.weight"] = tensor(out, out, 1, 1)
            state[f"{prefix}{module}.ese.fc.bias"] = tensor(out)
            cin = out
    state["fc.weight"] = tensor(1000, spec["out"][-1])
    return state


@pytest.fixture(scope="module")
def vovnet99_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = detectron2_vovnet(V99)
    path = tmp_path_factory.mktemp("d2") / "vovnet99_ese_detectron2.pth"
    torch.save({"model": state, "__author__": "someone"}, path)
    return path, state


def test_detectron2_vovnet99_places_every_tensor_and_lists_the_rest(vovnet99_file, tmp_path: Path) -> None:
    path, source = vovnet99_file
    state, report = import_detectron2(path, "ese_vovnet99b")
    weights = [key for key in state if not key.endswith("num_batches_tracked")]
    assert sorted(report.placed) == sorted(weights)
    p = "backbone.bottom_up."
    expected = {"stem_0.conv.weight": f"{p}stem.stem_1/conv.weight",
                "stem_2.bn.running_var": f"{p}stem.stem_3/norm.running_var",
                "stages_1.blocks.1.conv_mid.4.conv.weight": f"{p}stage3.OSA3_2.layers.4.OSA3_2_4/conv.weight",
                "stages_2.blocks.8.conv_concat.bn.bias": f"{p}stage4.OSA4_9.concat.OSA4_9_concat/norm.bias",
                "stages_3.blocks.2.attn.fc.bias": f"{p}stage5.OSA5_3.ese.fc.bias"}
    for target, name in expected.items():
        assert report.placed[target] == name
        assert torch.equal(state[target], source[name])
    # timm's ese_vovnet99b has an eSE in each stage's last block only: the other 12 blocks' eSE are listed
    ese_left = sorted(k for k in report.unmapped if ".ese." in k)
    assert len(ese_left) == 2 * (0 + 2 + 8 + 2)
    assert all(re.search(r"OSA(3_[12]|4_[1-8]|5_[12])\.ese", k) for k in ese_left)
    assert "fc.weight" in report.unmapped and len(report.unmapped) == len(ese_left) + 1

    out = tmp_path / "backbone.pth"
    assert bbox_weights_main(["import", "--from", "detectron2", str(path), "--out", str(out)]) == 0
    cfg = load_detector_config("seed_vovnet99", [f"model.backbone_weights={out}"])
    body = build_detector(cfg.model).backbone.body
    loaded = body.state_dict()
    assert torch.equal(loaded["stages_1.blocks.1.conv_mid.4.conv.weight"],
                       source[f"{p}stage3.OSA3_2.layers.4.OSA3_2_4/conv.weight"])
    assert torch.equal(loaded["stem_0.bn.weight"], source[f"{p}stem.stem_1/norm.weight"])  # frozen norm kept it


def test_a_wrong_vovnet_file_names_the_file_and_the_first_tensor(tmp_path: Path, capsys) -> None:
    slim = tmp_path / "v19_slim.pth"
    torch.save(detectron2_vovnet(V19_SLIM), slim)
    with pytest.raises(CheckpointError, match=r"v19_slim\.pth: backbone\.bottom_up\.stage2\.OSA2_1\.layers\.0\."
                                              r"OSA2_1_0/conv\.weight \(64, 128, 3, 3\) does not fit "
                                              r"ese_vovnet99b's stages_0\.blocks\.0\.conv_mid\.0\.conv\.weight "
                                              r"\(128, 128, 3, 3\)"):
        import_detectron2(slim, "ese_vovnet99b")
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    assert bbox_weights_main(["import", "--from", "detectron2", str(text), "--out", str(tmp_path / "o.pth")]) == 2
    assert re.search(r"error: .*notes\.pth: not a PyTorch checkpoint", capsys.readouterr().out)
    assert not (tmp_path / "o.pth").exists()


def _tf_port_name(key: str, state: dict[str, torch.Tensor]) -> str:
    """timm EfficientNet key -> the TF-port layout's (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...)."""
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1",
           "classifier": "_fc"}
    parts = key.split(".")
    if parts[0] != "blocks":
        return ".".join([top[parts[0]], *parts[1:]])
    stage, block = int(parts[1]), int(parts[2])
    flat = sum(1 for k in state if re.fullmatch(r"blocks\.(\d+)\.(\d+)\.conv_dw\.weight", k)
               and (int(k.split(".")[1]), int(k.split(".")[2])) < (stage, block))
    inverted = f"blocks.{stage}.{block}.conv_pwl.weight" in state
    names = ({"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
              "conv_pwl": "_project_conv", "bn3": "_bn2"} if inverted else
             {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"})
    rest = parts[3:]
    if rest[0] == "se":
        rest = [{"conv_reduce": "_se_reduce", "conv_expand": "_se_expand"}[rest[1]], *rest[2:]]
    else:
        rest = [names[rest[0]], *rest[1:]]
    return ".".join(["_blocks", str(flat), *rest])


def test_efficientnet_b5_from_timm_and_tf_port_releases(tmp_path: Path) -> None:
    torch.manual_seed(0)
    import timm

    release = timm.create_model("tf_efficientnet_b5", pretrained=False).state_dict()  # with its classifier
    torch.save({"state_dict": release}, tmp_path / "tf_efficientnet_b5_ns.pth")
    save_file({k: v.contiguous() for k, v in release.items()}, tmp_path / "b5_ns.safetensors")
    tf_port = {_tf_port_name(k, release): v for k, v in release.items() if not k.endswith("num_batches_tracked")}
    assert "_blocks.0._depthwise_conv.weight" in tf_port and "_blocks.3._expand_conv.weight" in tf_port
    torch.save(tf_port, tmp_path / "tf_port_b5.pth")

    for source, fmt in (("tf_efficientnet_b5_ns.pth", "timm"), ("b5_ns.safetensors", "timm"),
                        ("tf_port_b5.pth", "tf-port")):
        state, report = import_efficientnet(tmp_path / source, fmt, "tf_efficientnet_b5")
        assert set(report.unmapped) == ({"classifier.weight", "classifier.bias"} if fmt == "timm"
                                        else {"_fc.weight", "_fc.bias"})
        assert all(torch.equal(state[k], release[k]) for k in state if not k.endswith("num_batches_tracked"))

    out = tmp_path / "b5_ns_backbone.pth"
    assert metric_weights_main(["import", "--from", "timm", str(tmp_path / "b5_ns.safetensors"),
                                "--backbone", "tf_efficientnet_b5", "--out", str(out)]) == 0
    config = load_embedder_config("seed_b5a", ["model.init=file", f"model.weights={out}"])
    backbone = build_embedder(config).backbone.state_dict()
    assert torch.equal(backbone["blocks.3.2.conv_pwl.weight"], release["blocks.3.2.conv_pwl.weight"])
    assert torch.equal(backbone["bn2.running_var"], release["bn2.running_var"])


def test_a_wrong_efficientnet_file_names_the_file_and_the_first_tensor(tmp_path: Path) -> None:
    import timm

    b4 = timm.create_model("tf_efficientnet_b4", pretrained=False).state_dict()
    torch.save(b4, tmp_path / "b4.pth")
    with pytest.raises(CheckpointError, match=r"b4\.pth: has no tensor for tf_efficientnet_b5's "
                                              r"blocks\.0\.2\.conv_dw\.weight \(24, 1, 3, 3\)"):
        import_efficientnet(tmp_path / "b4.pth", "timm", "tf_efficientnet_b5")
    with pytest.raises(CheckpointError, match=r"b4\.pth: \d+ tensors for tf_efficientnet_b5's \d+; the first that "
                                              r"does not fit is number \d+ \(blocks\.\S+ for blocks\.\S+\)"):
        import_efficientnet(tmp_path / "b4.pth", "tf-port", "tf_efficientnet_b5")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"broken\.safetensors: not a readable safetensors file"):
        import_efficientnet(tmp_path / "broken.safetensors", "timm", "tf_efficientnet_b5")
