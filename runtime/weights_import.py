"""Importing weights saved by other code bases: reading them (``.pth`` or ``.safetensors``), placing every tensor
on a target state dict with its shape checked, and reporting what found no place.

The detector's (``bbox_sub.weights``: vovnet-detectron2 names to timm's VoVNet) and the embedder's
(``metric_sub.weights``: EfficientNet releases to timm) importers each only decide which source key feeds
which target key; reading, checking and writing are done here once, so that both fail the same way on a
wrong file: one line naming the file and the first tensor that does not fit.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from runtime.checkpoint import CheckpointError, load_state_dict, save_checkpoint, unwrap_state_dict

COUNTERS = "num_batches_tracked"
"""Batch norm's step counter: not a weight, and absent from many releases (FrozenBN, TF ports)."""


@dataclass
class ImportReport:
    """What an import did: target key -> source key for every tensor placed, and the source keys left out."""

    placed: dict[str, str] = field(default_factory=dict)
    unmapped: dict[str, str] = field(default_factory=dict)
    """Source key -> why it has no place in the target (a classifier, a layer the target does not have)."""

    def summary(self) -> str:
        lines = [f"placed {len(self.placed)} tensors"]
        if self.unmapped:
            lines.append(f"not imported ({len(self.unmapped)}):")
            lines += [f"  {key}: {why}" for key, why in self.unmapped.items()]
        return "\n".join(lines)


def read_weights(path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: ``.safetensors``, or a torch checkpoint however wrapped (read without
    running pickled code); numpy arrays (detectron2's pickles keep them) become tensors, other values go."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        try:
            state: Mapping = load_file(path)
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(path, f"not a readable safetensors file ({error})") from None
    else:
        state = load_state_dict(path, weights_only=True)
    tensors = {key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
               for key, value in unwrap_state_dict(state, path).items()}
    tensors = {key: value for key, value in tensors.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CheckpointError(path, "holds no tensors")
    return tensors


def place(path: Path | str, pairs: Mapping[str, str], source: Mapping[str, torch.Tensor],
          target: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """``target``'s state dict filled from ``source`` through ``pairs`` (target key -> source key).

    Every target tensor must be fed, with its exact shape, except batch norm counters (kept from the target);
    the first one that is not fails naming ``path``, the tensor and both shapes.
    """
    out: dict[str, torch.Tensor] = {}
    for key, expected in target.items():
        source_key = pairs.get(key)
        if source_key is None:
            if key.endswith(COUNTERS):
                out[key] = expected.clone()
                continue
            raise CheckpointError(path, f"has no tensor for {what}'s {key} {tuple(expected.shape)}: not weights "
                                        f"of this network")
        tensor = source[source_key]
        if tuple(tensor.shape) != tuple(expected.shape):
            raise CheckpointError(path, f"{source_key} {tuple(tensor.shape)} does not fit {what}'s {key} "
                                        f"{tuple(expected.shape)}: not weights of this network")
        out[key] = tensor.detach().to(expected.dtype).clone()
    return out


def write_weights(path: Path | str, state: Mapping[str, torch.Tensor]) -> Path:
    """A bare state dict as a torch checkpoint, written atomically: the form ``model.backbone_weights`` and
    ``model.weights`` read (``runtime.pretrained.load_backbone_file``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, dict(state))


def import_cli(prog: str, description: str, formats: list[str], default_backbone: str,
               convert: Callable[[Path, str, str], tuple[dict[str, torch.Tensor], ImportReport]],
               argv: list[str] | None) -> int:
    """``PROG import --from FORMAT FILE --out OUT [--backbone NAME]``: convert, write, print the report."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("import", help="convert a weights file into the layout the configs take")
    command.add_argument("--from", dest="source_format", required=True, choices=formats)
    command.add_argument("weights", type=Path, help="the released weights (.pth, .pkl or .safetensors)")
    command.add_argument("--out", required=True, type=Path, help="where to write the converted .pth")
    command.add_argument("--backbone", default=default_backbone, help="timm model name of the target")
    args = parser.parse_args(argv)
    try:
        state, report = convert(args.weights, args.source_format, args.backbone)
    except (CheckpointError, FileNotFoundError) as error:
        print(f"error: {error}")
        return 2
    write_weights(args.out, state)
    print(report.summary())
    print(f"wrote {args.out}")
    return 0
