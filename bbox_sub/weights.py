"""The seed's ImageNet VoVNet weights for the detector: vovnet-detectron2 names onto timm's VoVNet.

``python -m bbox_sub.weights import --from detectron2 vovnet99_ese_detectron2.pth --out backbone.pth``

writes the state dict of the detector's timm ``features_only`` backbone (``--backbone``, default
``ese_vovnet99b``), which ``model.backbone_weights: backbone.pth`` then loads. Every tensor of the target is
fed, with its shape checked, and the source tensors that have no place are listed.

vovnet-detectron2 (``vovnet/vovnet.py``) names layers ``stem.stem_{1,2,3}/{conv,norm}``,
``stage{2..5}.OSA{s}_{b}.layers.{l}.OSA{s}_{b}_{l}/{conv,norm}``, ``...concat.OSA{s}_{b}_concat/{conv,norm}``
and ``...ese.fc``, with ``dw_conv3x3``/``pw_conv1x1``/``pw_norm`` in its depthwise variants; timm names the same
layers ``stem.{i}``, ``stages.{s}.blocks.{b}.conv_mid.{l}``, ``conv_concat``, ``attn.fc``. One difference is not
a naming one: vovnet-detectron2 gives every OSA block an eSE attention, timm's ``ese_vovnet*b`` only the last
block of each stage, so for VoVNet-99 the eSE layers of 12 of its 16 blocks have no place and are listed.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import timm

from bbox_sub.config import ModelConfig
from runtime.weights_import import ImportReport, import_cli, place, read_weights

PREFIXES = ("module.", "backbone.bottom_up.", "bottom_up.", "backbone.")
"""What a detectron2 training checkpoint puts before the backbone's own names."""

PARTS = {"conv": "conv", "norm": "bn", "dw_conv3x3": "conv_dw", "pw_conv1x1": "conv_pw", "pw_norm": "bn"}
"""vovnet-detectron2 layer suffix -> timm ``ConvNormAct`` / ``SeparableConvNormAct`` attribute."""

_STEM = re.compile(r"stem\.stem_(\d)/(\w+)\.(\w+)")
_MID = re.compile(r"stage(\d)\.OSA\d_(\d+)\.layers\.(\d+)\.OSA\d_\d+_\d+/(\w+)\.(\w+)")
_CONCAT = re.compile(r"stage(\d)\.OSA\d_(\d+)\.concat\.OSA\d_\d+_concat/(\w+)\.(\w+)")
_REDUCTION = re.compile(r"stage(\d)\.OSA\d_(\d+)\.conv_reduction\.OSA\d_\d+_reduction_0/(\w+)\.(\w+)")
_ESE = re.compile(r"stage(\d)\.OSA\d_(\d+)\.ese\.fc\.(\w+)")


def timm_name(key: str) -> str | None:
    """The timm VoVNet key of a vovnet-detectron2 key (prefixes such as ``backbone.bottom_up.`` removed), or
    ``None`` for a key that is not a VoVNet layer (a classifier, the FPN)."""
    for prefix in PREFIXES:
        key = key.removeprefix(prefix)
    if m := _STEM.fullmatch(key):
        index, part, param = m.groups()
        return f"stem.{int(index) - 1}.{PARTS[part]}.{param}" if part in PARTS else None
    if m := _MID.fullmatch(key):
        stage, block, layer, part, param = m.groups()
        if part not in PARTS:
            return None
        return f"stages.{int(stage) - 2}.blocks.{int(block) - 1}.conv_mid.{layer}.{PARTS[part]}.{param}"
    for pattern, name in ((_CONCAT, "conv_concat"), (_REDUCTION, "conv_reduction")):
        if m := pattern.fullmatch(key):
            stage, block, part, param = m.groups()
            if part not in PARTS:
                return None
            return f"stages.{int(stage) - 2}.blocks.{int(block) - 1}.{name}.{PARTS[part]}.{param}"
    if m := _ESE.fullmatch(key):
        stage, block, param = m.groups()
        return f"stages.{int(stage) - 2}.blocks.{int(block) - 1}.attn.fc.{param}"
    return None


def _body_key(name: str, body_keys: set[str]) -> str | None:
    """A full-model timm key as the ``features_only`` body names it (``stem.0.x`` -> ``stem_0.x``)."""
    for candidate in (name, name.replace(".", "_", 1)):
        if candidate in body_keys:
            return candidate
    return None


def import_detectron2(path: Path, backbone: str = "ese_vovnet99b",
                      out_indices: tuple[int, ...] = ModelConfig().out_indices) -> tuple[dict, ImportReport]:
    """vovnet-detectron2 weights as the state dict of the detector's timm backbone, and what was left out."""
    source = read_weights(path)
    body = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=out_indices)
    target = body.state_dict()
    report = ImportReport()
    pairs: dict[str, str] = {}
    for key in source:
        name = timm_name(key)
        if name is None:
            report.unmapped[key] = "not a VoVNet backbone layer"
            continue
        placed = _body_key(name, set(target))
        if placed is None:
            why = (f"{backbone} has no eSE attention in this block (timm keeps it in each stage's last block)"
                   if ".attn." in name else f"{backbone} has no {name}")
            report.unmapped[key] = why
            continue
        pairs[placed] = key
    state = place(path, pairs, source, target, backbone)
    report.placed = {key: pairs[key] for key in state if key in pairs}
    return state, report


def _convert(path: Path, source_format: str, backbone: str) -> tuple[dict, ImportReport]:
    return import_detectron2(path, backbone)


def main(argv: list[str] | None = None) -> int:
    return import_cli("python -m bbox_sub.weights", __doc__.split("\n\n")[0], ["detectron2"], "ese_vovnet99b",
                      _convert, argv)


if __name__ == "__main__":
    sys.exit(main())
