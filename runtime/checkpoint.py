"""Checkpoints on disk: written atomically, read back on the CPU or a given device."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dataset.jsonio import atomic_path


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> Path:
    """``torch.save`` atomically, so a crash never leaves a half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint saved by ``save_checkpoint`` (weights and plain training state only)."""
    return torch.load(Path(path), map_location=map_location, weights_only=False)
