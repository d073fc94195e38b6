"""Resident memory of this process: now, the peak of one stage, and the peak of the whole run.

A batch run reports what each stage took (``summary.json``), so a change that
makes a stage hold on to more memory than it needs shows up in the numbers.
Linux keeps the peak (``VmHWM``) per process; writing ``5`` to
``/proc/self/clear_refs`` resets it, which turns it into a per-stage peak.
Where that is not allowed, a stage's peak is the process's peak so far, and
the record says so.
"""
from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path

MIB = 2**20
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), or ``None`` elsewhere."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mib() -> float | None:
    """Resident memory now."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def peak_rss_mib() -> float:
    """The resident peak since the process started or since the last ``reset_peak``."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib / 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return maxrss / MIB if sys.platform == "darwin" else maxrss / 1024


def reset_peak() -> bool:
    """Start a new peak at the current resident size; whether the kernel allowed it."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class StageMemory:
    """Resident memory of one stage in MiB: its peak, what it ended at and how much it added.

    ``peak_scope`` is ``stage`` when the peak was reset at the stage's start,
    ``process`` when it is the process's peak so far.
    """

    peak_rss_mib: float
    end_rss_mib: float
    growth_mib: float
    peak_scope: str

    def to_json(self) -> dict[str, float | str]:
        return {"peak_rss_mib": round(self.peak_rss_mib, 1), "end_rss_mib": round(self.end_rss_mib, 1),
                "growth_mib": round(self.growth_mib, 1), "peak_scope": self.peak_scope}


class MemoryMeter:
    """Measures stages one after another and keeps the process's peak across the resets."""

    def __init__(self) -> None:
        self.process_peak_mib = peak_rss_mib()
        self._start_mib = 0.0
        self._scope = "process"

    def start(self) -> None:
        self.process_peak_mib = max(self.process_peak_mib, peak_rss_mib())
        self._start_mib = rss_mib() or 0.0
        self._scope = "stage" if reset_peak() else "process"

    def stop(self) -> StageMemory:
        peak, end = peak_rss_mib(), rss_mib() or 0.0
        self.process_peak_mib = max(self.process_peak_mib, peak)
        return StageMemory(peak, end, end - self._start_mib, self._scope)
