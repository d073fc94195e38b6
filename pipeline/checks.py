"""A batch run's inputs, checked before any work: a typo costs one line, not a traceback after minutes of
detection or an output folder made for nothing.

Every problem is an ``InputError`` naming the path or option and what is wrong
with it; ``python -m pipeline`` prints it as one line and exits
with code 2. Nothing is created until every check has passed
(``prepare_out_dir``).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bbox_sub.config import DETECTOR_CONFIGS
from dataset.errors import DataError
from dataset.layout import check_root
from runtime.device import parse_device
from metric_sub.config import EMBEDDER_CONFIGS


class InputError(DataError):
    """An input a run cannot work with: a missing root or weights file, an output folder it cannot write."""


def check_config_name(name: str | Path, kind: str) -> None:
    """A config is a YAML file or the name of a bundled one (``kind``: ``detector`` or ``embedder``)."""
    (DETECTOR_CONFIGS if kind == "detector" else EMBEDDER_CONFIGS).path(name)


def check_readable_file(path: Path, what: str) -> None:
    """``path`` exists, is a file and can be read."""
    if not path.exists():
        raise InputError(path, f"{what} not found")
    if not path.is_file():
        raise InputError(path, f"{what} is not a file")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise InputError(path, f"{what} cannot be read ({exc.strerror or exc})") from None


def check_out_dir(out: Path) -> None:
    """``out`` is a folder, or can be made one, that this process may write in; nothing is created."""
    path = out.expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "it is a file" if existing == path else f"{existing} is a file, not a folder"
        raise InputError(out, f"output folder cannot be created: {where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" ({existing} does not allow it)"
        raise InputError(out, f"output folder cannot be written{where}")


def check_device(name: str) -> None:
    """``auto``, ``cpu`` or ``cuda[:k]``, the latter only where CUDA is available."""
    try:
        parse_device(name)
    except ValueError as exc:
        raise ValueError(f"--device {name}: {str(exc).split(': ', 1)[1]}") from None


def check_inputs(roots: Sequence[Path], out: Path, *, detector_weights: Path | None,
                 embedder_weights: Sequence[Path | None], device: str) -> None:
    """Every root, the output folder, every weights file and the device, in that order; the first problem
    raises."""
    for root in roots:
        check_root(root)
    check_out_dir(out)
    if detector_weights is not None:
        check_readable_file(detector_weights, "detector weights")
    for weights in embedder_weights:
        if weights is not None:
            check_readable_file(weights, "embedder weights")
    check_device(device)


def prepare_out_dir(out: Path) -> Path:
    """Create ``out`` and write a file in it once, so that a folder that refuses writes fails here."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise InputError(out, f"output folder cannot be written ({exc.strerror or exc})") from None
    return out
