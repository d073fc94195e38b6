"""The main job as a user runs it: ``python -m pipeline.demo`` per seed, from nothing, timed whole.

Run from the repository root::

    python -m bench.demo [--seeds 0 1 2] [--work runs/bench/demo] [--out bench/results/demo_cpu.json]

Each seed runs in a fresh process and a fresh folder (data generated, detector
trained, pipeline run), so the wall time is what a new user waits for. The
score depends on the seed's data and on the CPU's precision (bf16 where the
CPU has it, float32 elsewhere), which the result records.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import print_table, write_result

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "demo_cpu.json"
COLUMNS = ["seed", "precision", "score", "matched", "clips", "wall_s", "cpu_s", "pipeline_peak_rss_mib"]


def run_seed(seed: int, folder: Path) -> dict:
    """One demo run in its own process; wall and CPU seconds and the peak memory come from the OS."""
    shutil.rmtree(folder, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline.demo", "--out", str(folder), "--seed", str(seed)]
    cpu_before, started = _children_cpu_seconds(), time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    wall, cpu = time.perf_counter() - started, _children_cpu_seconds() - cpu_before
    if done.returncode != 0:
        raise SystemExit(f"seed {seed}: the demo failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    summary = json.loads((folder / "run" / "summary.json").read_text())
    return {"seed": seed, "precision": _precision(), "score": summary["score"], "matched": summary["matched"],
            "clips": summary["clips"], "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "pipeline_peak_rss_mib": summary.get("peak_rss_mib")}


def _children_cpu_seconds() -> float:
    """User and system seconds of every finished child process so far (the demo's threads included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _precision() -> str:
    from runtime.precision import cpu_has_bf16

    return "bf16" if cpu_has_bf16() else "fp32"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench" / "demo",
                        help="where each seed's demo folder goes (cleared first)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result path")
    args = parser.parse_args(argv)
    rows = [run_seed(seed, args.work / f"seed{seed}") for seed in args.seeds]
    print_table(rows, COLUMNS)
    print(f"wrote {write_result(args.out, 'demo', rows, {'command': 'python -m pipeline.demo --seed N'})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
