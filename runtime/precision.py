"""What precision and memory layout a model runs in: autocast where the device computes bf16 or fp16
natively, true float32 for comparisons, channels_last where it pays.

The CPU check lives here once so that the detector, the embedder and the
benchmarks all take the same bf16-or-float32 decision on the same machine.
"""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch


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

    There oneDNN runs bf16 convolutions several times faster than float32
    (bench/results/detect_cpu_bf16.json against detect_cpu_fp32.json);
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
