"""How glibc's allocator treats the memory a forward pass frees: kept for the next pass, handed back between runs.

Tuned here rather than left to glibc's defaults because a CPU forward pass
frees and re-requests blocks the size of whole feature maps, which glibc by
default unmaps and page-faults in again on every pass.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys

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
    afresh, a cost that grows with the maps rather than with the arithmetic
    (speeds measured with this setting: bench/results/detect_cpu_bf16.json,
    embed_cpu_bf16.json; memory: e2e_untrained_cpu.json). Without ``mmap``
    (``M_MMAP_MAX`` 0) and without trimming, the heap keeps whatever a pass
    freed; glibc cannot raise its mmap threshold above 32 MB instead. What is
    kept is bounded by ``release_freed_memory``, which a batch run calls
    between clips, chunks and stages.
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
