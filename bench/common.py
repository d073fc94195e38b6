"""Helpers every benchmark shares: timing, an aligned text table, and a JSON result that names the machine.

A throughput number means nothing without the machine it came from, so every
result file records the CPU, the accelerator and the package versions next to
the rows.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

PACKAGES = ("numpy", "opencv-python-headless", "decord2", "torch", "torchvision", "timm",
            "faiss-cpu", "faiss-gpu", "imageio-ffmpeg", "ray")
"""Distributions whose versions a result records when they are installed."""


class Timer:
    """Wall-clock and process CPU seconds of a ``with`` block.

    CPU time counts every thread of this process; on a machine busy with other
    work it stays near the quiet-machine cost while wall time grows, so the two
    together tell a slow method from a busy machine.
    """

    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def __enter__(self) -> "Timer":
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.seconds = time.perf_counter() - self._start
        self.cpu_seconds = time.process_time() - self._cpu_start


@dataclass(frozen=True)
class Timing:
    """Median wall and CPU seconds of repeated runs."""

    seconds: float
    cpu_seconds: float


def measure(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs.

    The warm-up runs fill the page cache and start thread pools; the median
    ignores one run disturbed by something else on the machine.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: need at least 1")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        with Timer() as timer:
            fn()
        times.append(timer.seconds)
    return statistics.median(times)


def measure_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 3,
                        warmup: int = 1) -> dict[str, Timing]:
    """Median wall and CPU seconds of each function, timed in rounds of one call each.

    Comparing variants this way spreads a burst of background load over all of
    them instead of penalising whichever happened to run during it.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: need at least 1")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    timers: dict[str, list[Timer]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            with Timer() as timer:
                fn()
            timers[name].append(timer)
    return {name: Timing(statistics.median(t.seconds for t in runs),
                         statistics.median(t.cpu_seconds for t in runs))
            for name, runs in timers.items()}


def format_value(value: object) -> str:
    """Numbers at a precision worth reading, booleans as yes/no, ``None`` as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as an aligned text table: numbers right-aligned, text left-aligned."""
    cells = [[format_value(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[i]) for line in cells)]) for i, column in enumerate(columns)]
    numeric = [_is_numeric([row.get(column) for row in rows]) for column in columns]

    def line(values: Sequence[str]) -> str:
        padded = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric))
        return "  ".join(padded).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def format_markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as a markdown table with the cells ``format_table`` prints, for pages generated from results.

    Numeric columns are right-aligned by the separator row; cells are padded so the raw file reads as a table too.
    """
    header = [_markdown_cell(column) for column in columns]
    cells = [[_markdown_cell(format_value(row.get(column))) for column in columns] for row in rows]
    widths = [max([len(name), 3, *(len(line[i]) for line in cells)]) for i, name in enumerate(header)]
    numeric = [_is_numeric([row.get(column) for row in rows]) for column in columns]

    def line(values: Sequence[str]) -> str:
        padded = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric))
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if num else "-" * w for w, num in zip(widths, numeric)]
    return "\n".join([line(header), line(rule), *(line(c) for c in cells)])


def _markdown_cell(text: str) -> str:
    """A pipe or a line break inside a value would split the cell or the row."""
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _is_numeric(values: Sequence[object]) -> bool:
    """A column of numbers (gaps allowed) is right-aligned."""
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    print(format_table(rows, columns), flush=True)


def machine_info() -> dict[str, Any]:
    """The CPU, memory, accelerator, Python and package versions a measurement ran on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "cpu_bf16": _cpu_bf16(),
        "memory_gib": round(pages * os.sysconf("SC_PAGE_SIZE") / 2**30, 1) if pages else None,
        # Other processes running at the time make every number slower; the 1-minute load says so.
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "accelerator": _accelerator(),
        "packages": _package_versions(PACKAGES),
    }


def write_result(path: Path | str, name: str, rows: Sequence[dict[str, Any]],
                 extra: dict[str, Any] | None = None) -> Path:
    """Write one benchmark's rows, settings (``extra``) and machine as JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "name": name,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "rows": list(rows),
        "extra": extra or {},
    }
    path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_bf16() -> bool | None:
    """Whether a CPU run used bf16 autocast where asked (``runtime.precision.cpu_has_bf16``); ``None`` without torch."""
    try:
        from runtime.precision import cpu_has_bf16
    except ImportError:
        return None
    return cpu_has_bf16()


def _accelerator() -> dict[str, Any] | None:
    """The CUDA device torch sees, or ``None`` on a CPU-only machine or without torch."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda, "torch": torch.__version__}


def _package_versions(names: Sequence[str]) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def synthetic_splits(folder: Path, train_items: int, test_items: int, seed: int,
                     knobs: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """A train root and a held-out root with disjoint item ids (1.. and 50001..), reused when unchanged."""
    from dataset.synth import SynthConfig, ensure

    roots = []
    for name, items, first_id, offset in (("train", train_items, 1, 0), ("test", test_items, 50_001, 1)):
        root = Path(folder) / name
        ensure(root, SynthConfig(items=items, seed=seed + offset, first_id=first_id, **(knobs or {})))
        roots.append(root)
    return roots[0], roots[1]
