"""Where and on how many threads a model runs: the device choice and the intra-op thread count."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from runtime.allocator import keep_freed_memory


def parse_device(name: str = "auto") -> torch.device:
    """The device ``name`` means here (``auto``: CUDA when available, else CPU); a malformed name, or CUDA where
    there is none, raises ``ValueError`` saying so. Nothing is set up: see ``pick_device``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r}: expected auto, cpu or cuda[:k]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available on this machine")
    return device


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; an explicit name is honoured or fails clearly.

    Choosing the CPU also turns on flushing of denormal floats: as freshly
    initialised weights shrink during training, denormal arithmetic slowed
    the CPU steps of a small detector four- to tenfold. And it keeps freed
    memory in the process (``keep_freed_memory``).
    """
    device = parse_device(name)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
        keep_freed_memory()
    return device


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Temporarily cap intra-op threads (benchmarks compare at a fixed count)."""
    if not count:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
