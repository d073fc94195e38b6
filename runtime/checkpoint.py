"""Checkpoints on disk: written atomically, and read back through one loader.

Every weights file the project reads goes through ``load_checkpoint``, so that
each lands on the CPU (or the device asked for), unpickles only what its caller
allows (``weights_only``), and a file that is not a checkpoint fails with one
line naming it instead of a pickle traceback.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dataset.errors import DataError
from dataset.jsonio import atomic_path

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
"""Keys a training checkpoint keeps its state dict under (timm's and torchvision's trainers, this project's,
the seed's ``model_state_dict``, DeepSpeed's ``module``), in the order they are tried."""

WEIGHTS_ONLY_REASON = "WeightsUnpickler error:"
"""Where torch's message for a file a weights-only load refuses gives the reason."""

DDP_PREFIX = "module."
"""What ``DistributedDataParallel`` puts before every key of the model it wraps."""


class CheckpointError(DataError):
    """A weights file that torch cannot load, or that holds no state dict a model could take."""


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> Path:
    """``torch.save`` atomically, so a crash never leaves a half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu", *, weights_only: bool) -> Any:
    """What ``path`` holds, its tensors on ``map_location``; the one place the project calls ``torch.load``.

    ``weights_only`` is each caller's explicit choice: true for weights from
    elsewhere (tensors and plain containers, no code run while unpickling),
    false for the project's own training checkpoints, which also hold RNG
    states and configs. A missing or unreadable file raises the ``OSError``
    that names it; a file torch cannot load raises ``CheckpointError``.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except OSError:
        raise
    except Exception as error:  # pickle, zip and torch's own errors alike: the file is the problem
        raise CheckpointError(path, _problem(path, error)) from error


def load_state_dict(path: Path | str, map_location: str | torch.device = "cpu", *,
                    weights_only: bool = True) -> dict[str, Any]:
    """The state dict in a weights file however it was saved: bare or under a wrapper key (``WRAPPER_KEYS``,
    unwrapped as timm's ``load_state_dict`` does), with DDP's ``module.`` prefix taken off every key."""
    return unwrap_state_dict(load_checkpoint(path, map_location, weights_only=weights_only), path)


def unwrap_state_dict(state: Any, path: Path | str) -> dict[str, Any]:
    """``state``'s state dict (see ``load_state_dict``); ``path`` names the file in the error for anything else."""
    while isinstance(state, Mapping):
        key = next((k for k in WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
        if key is None:
            break
        state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(path, f"holds a {type(state).__name__}, not a state dict")
    return {key.removeprefix(DDP_PREFIX): value for key, value in state.items()}


def _problem(path: Path, error: Exception) -> str:
    """One line: whether the file is empty, no checkpoint at all, or one that could not be loaded, and why."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    refused = WEIGHTS_ONLY_REASON in text
    if refused:  # torch's weights-only message is a page of advice with the reason at its end
        text = text.split(WEIGHTS_ONLY_REASON, 1)[1]
        text = next((part for part in text.split("\n\n") if part.strip()), "").split(". ", 1)[0]
    reason = " ".join(text.split())[:200] or type(error).__name__
    if path.stat().st_size == 0:
        return "an empty file, not a PyTorch checkpoint"
    if not _looks_like_checkpoint(path):
        return f"not a PyTorch checkpoint ({reason})"
    if refused:
        return f"holds more than weights, which a weights-only load refuses ({reason})"
    return f"cannot load this checkpoint ({reason})"


def _looks_like_checkpoint(path: Path) -> bool:
    """A zip archive (``torch.save``'s format, cut off or whole) or a pickle (the legacy format), by its opening."""
    with path.open("rb") as f:
        start = f.read(4)
    return start == b"PK\x03\x04" or start[:1] == b"\x80"
