"""Runtime helpers both stages train and run with: device choice, seeding,
autocast, learning-rate schedules and crash-safe checkpoints.

Kept in one place so that the detector and the embedder behave the same on
CPU and CUDA, resume the same way, and schedule their learning rate with the
same, tested code.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataset.jsonio import atomic_path


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; an explicit name is honoured or fails clearly.

    Choosing the CPU also turns on flushing of denormal floats: as freshly
    initialised weights shrink during training, denormal arithmetic slowed
    the CPU steps of a small detector four- to tenfold. And it keeps freed
    memory in the process (``keep_freed_memory``).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    if device.type == "cpu":
        torch.set_flush_denormal(True)
        keep_freed_memory()
    return device


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
MALLOC_ENV = "SHOPMATCH_MALLOC"


@functools.cache
def _load_glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def _glibc() -> ctypes.CDLL | None:
    """glibc, when this process runs on it and ``SHOPMATCH_MALLOC=system`` does not opt out."""
    if os.environ.get(MALLOC_ENV) == "system" or not sys.platform.startswith("linux"):
        return None
    return _load_glibc()


def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks for reuse instead of handing them back to the kernel; whether it took.

    glibc serves every block above 32 MB with its own ``mmap`` and unmaps it
    when freed, so each CPU forward pass page-faults its feature maps in
    afresh: about a quarter of a Lite2 detector call on 4 frames (figures in
    the readme). Without ``mmap`` (``M_MMAP_MAX`` 0) and without trimming, the
    heap keeps whatever a pass freed; glibc cannot raise its mmap threshold
    above 32 MB instead. What is kept is bounded by ``release_freed_memory``,
    which a batch run calls between clips, chunks and stages.
    ``SHOPMATCH_MALLOC=system`` leaves the allocator as it is; other C
    libraries are left alone.
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def release_freed_memory() -> bool:
    """Hand the free pages the heap kept back to the kernel (``malloc_trim(0)``); whether any were.

    Kept memory only pays inside a hot loop, where the next pass reuses it;
    across clips of other sizes, chunks and stages it piles up as free holes
    that the process never returns. Does nothing under ``SHOPMATCH_MALLOC=system``.
    """
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def true_fp32() -> Iterator[None]:
    """TF32 off inside the block, so float32 work on CUDA is true float32 (comparisons against the CPU or
    against another float32 result would otherwise see TF32's ten-bit rounding, compounded layer by layer)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# oneDNN's ISA names from the least to the most capable; bf16 runs natively from AVX512_CORE_BF16 on.
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
               "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16")


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AMX or AVX512-BF16) and may use it.

    There oneDNN runs bf16 convolutions several times faster than float32;
    without those instructions oneDNN's bf16 convolutions are slower, or
    refused outright on CPUs without AVX-512 (AVX2-only AMD and Intel parts),
    so autocast stays off. The hardware answer is lowered by the limits a user
    sets for torch and oneDNN (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``),
    which is how the float32-only path is run on a CPU that has bf16.
    """
    checks = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    hardware = any(check is not None and check() for check in checks)
    return hardware and torch.backends.cpu.get_cpu_capability() == "AVX512" and onednn_isa_allows_bf16()


def onednn_isa_allows_bf16() -> bool:
    """Whether ``ONEDNN_MAX_CPU_ISA`` (unset, ``ALL`` or ``DEFAULT`` allow everything) admits native bf16."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).strip().upper()
    if limit in ("", "ALL", "DEFAULT"):
        return True
    if limit not in ONEDNN_ISAS:
        return False
    return ONEDNN_ISAS.index(limit) >= ONEDNN_ISAS.index("AVX512_CORE_BF16")


def autocast_dtype(device: torch.device, dtype: str = "bf16") -> torch.dtype | None:
    """The dtype autocast runs ``dtype`` in on ``device``, or ``None`` for plain float32.

    CUDA runs bf16 and fp16; a CPU runs bf16 where it has the instructions
    for it (``cpu_has_bf16``) and float32 otherwise.
    """
    if dtype == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if dtype == "bf16" else torch.float16
    if device.type == "cpu" and dtype == "bf16" and cpu_has_bf16():
        return torch.bfloat16
    return None


def effective_dtype(device: torch.device, dtype: str = "bf16") -> str:
    """What asking for ``dtype`` on ``device`` runs in: ``dtype`` itself, or ``fp32`` where autocast is off."""
    return dtype if autocast_dtype(device, dtype) is not None else "fp32"


def autocast(device: torch.device, dtype: str = "bf16") -> contextlib.AbstractContextManager:
    """Mixed precision where ``autocast_dtype`` finds it, else a no-op."""
    low = autocast_dtype(device, dtype)
    if low is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=low)


def channels_last_pays(device: torch.device, dtype: str = "bf16") -> bool:
    """channels_last where it speeds convolutions up: on CUDA, and on a CPU running bf16, whose oneDNN
    kernels want that layout (float32 CPU convolutions gained nothing from it)."""
    return device.type == "cuda" or autocast_dtype(device, dtype) is not None


def lr_factor(step: int, total: int, warmup: int, schedule: str = "cosine", warmup_start: float = 0.001,
              milestones: tuple[int, ...] = (), gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at ``step``.

    Linear warmup from ``warmup_start`` over ``warmup`` steps, then either a
    half cosine to 0 at ``total`` (``cosine``), or a step decay by ``gamma``
    at each milestone (``step``), or constant (``constant``).
    """
    if warmup > 0 and step < warmup:
        alpha = step / warmup
        warm = warmup_start * (1 - alpha) + alpha
    else:
        warm = 1.0
    if schedule == "cosine":
        progress = min(max(step, 0) / max(total, 1), 1.0)
        return warm * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return warm * gamma ** sum(step >= m for m in milestones)
    if schedule == "constant":
        return warm
    raise ValueError(f"unknown schedule {schedule!r}: expected cosine, step or constant")


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> Path:
    """``torch.save`` atomically, so a crash never leaves a half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint saved by ``save_checkpoint`` (weights and plain training state only)."""
    return torch.load(Path(path), map_location=map_location, weights_only=False)


def rng_state() -> dict[str, Any]:
    """Every RNG state a training loop draws from, for exact resume."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
