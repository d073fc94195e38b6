"""The seed's Noisy-Student EfficientNet weights for the embedders, from a timm or a TF-port release.

``python -m metric_sub.weights import --from timm tf_efficientnet_b5_ns.pth --backbone tf_efficientnet_b5 \\
--out b5_ns.pth`` (``.pth`` or ``.safetensors``) writes the state dict of the embedder's headless
timm backbone, which ``model: {init: file, weights: b5_ns.pth}`` then loads.

``--from timm``: timm's own layout (the ``tf_efficientnet_b5_ns`` release, ``tf_efficientnet_b5.ns_jft_in1k``
on the hub), placed by name. ``--from tf-port``: the layout of the PyTorch ports of the TensorFlow release
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ...), whose tensors come in the order of timm's, shape for
shape, and are placed in that order (as ``runtime.pretrained`` does for the Lite packages). Either way every
tensor of the backbone is fed and shape-checked, and the classifier, which an embedder does not have, is
listed as not imported.
"""
from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch

from runtime.checkpoint import CheckpointError
from runtime.weights_import import COUNTERS, ImportReport, import_cli, place, read_weights

CLASSIFIERS = ("classifier.", "_fc.", "fc.", "head.fc.")
"""Where timm (``classifier``) and the TF ports (``_fc``) keep the ImageNet classifier."""


def _backbone_state(backbone: str) -> dict[str, torch.Tensor]:
    """The embedder's trunk as ``metric_sub.model.Embedder`` builds it (no classifier, no pooling)."""
    return timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="").state_dict()


def import_efficientnet(path: Path, source_format: str, backbone: str) -> tuple[dict, ImportReport]:
    """An EfficientNet release as the state dict of the embedder's timm ``backbone``, and what was left out."""
    source = read_weights(path)
    target = _backbone_state(backbone)
    report = ImportReport()
    weights = {}
    for key, value in source.items():
        if key.startswith(CLASSIFIERS):
            report.unmapped[key] = "the ImageNet classifier (an embedder has none)"
        elif key.endswith(COUNTERS):
            continue
        else:
            weights[key] = value
    if source_format == "timm":
        pairs = {key: key for key in target if key in weights}
        report.unmapped |= {key: f"{backbone} has no such tensor" for key in weights if key not in target}
    else:
        wanted = [key for key in target if not key.endswith(COUNTERS)]
        given = list(weights)
        if len(given) != len(wanted):
            first = next((i for i, (a, b) in enumerate(zip(given, wanted))
                          if tuple(weights[a].shape) != tuple(target[b].shape)), min(len(given), len(wanted)))
            raise CheckpointError(path, f"{len(given)} tensors for {backbone}'s {len(wanted)}; the first that "
                                        f"does not fit is number {first} "
                                        f"({given[first] if first < len(given) else 'none left'} for "
                                        f"{wanted[first] if first < len(wanted) else 'nothing'})")
        pairs = dict(zip(wanted, given))
    state = place(path, pairs, weights, target, backbone)
    report.placed = {key: pairs[key] for key in state if key in pairs}
    return state, report


def main(argv: list[str] | None = None) -> int:
    return import_cli("python -m metric_sub.weights", __doc__.split("\n\n")[0], ["timm", "tf-port"],
                      "tf_efficientnet_b5", import_efficientnet, argv)


if __name__ == "__main__":
    sys.exit(main())
