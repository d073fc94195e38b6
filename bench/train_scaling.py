"""Training throughput on 1..N processes: samples per second of the detector and the embedder under torchrun.

Run from the repository root::

    python -m bench.train_scaling [--ranks 1 2] [--models detector embedder] [--out PATH]

Each world size runs the real training command (``torchrun --nproc_per_node=K -m bbox_sub.train`` and
``-m metric_sub.train``) on one generated root, with a fixed batch per rank (weak scaling: the global batch
grows with the ranks, as it would when adding GPUs). On a CPU each rank gets ``--threads-per-rank`` threads
(default 1: a core per rank, as a GPU per rank), so K ranks use K cores; on a GPU machine K goes over
1..(number of GPUs), one GPU per rank. The rate is taken after a warm-up: the detector's steps after
``--warmup`` (from its log's per-step seconds), the embedder's last epoch (``train_seconds`` in its metrics).
Efficiency is the rate of K ranks over K times the rate of one.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.common import print_table, write_result

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["model", "device", "ranks", "batch_per_rank", "global_batch", "threads_per_rank", "steps",
           "samples_per_s", "efficiency"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(ranks: int, module: str, args: list[str], threads: int | None, log: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", module, *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with log.open("w") as sink:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        raise SystemExit(f"{module} on {ranks} ranks failed (exit {done.returncode}); see {log}")


def detector_rate(root: Path, work: Path, ranks: int, per_rank: int, steps: int, warmup: int, config: str,
                  device: str, threads: int | None) -> tuple[float, int]:
    """Images per second over the steps after ``warmup``, and the global batch."""
    batch = per_rank * ranks
    stage = (f"train.stages=[{{name: s1, iterations: {warmup + steps}, base_lr: 0.01, batch_size: {batch}, "
             f"schedule: constant, min_sizes: [256], max_size: 512}}]")
    out = work / f"detector_{ranks}"
    shutil.rmtree(out, ignore_errors=True)
    args = ["--config", config, "--data", str(root), "--out", str(out), "--device", device]
    for setting in (stage, "train.val_fraction=0", "train.log_every=1", "train.eval_every=100000",
                    "train.checkpoint_every=100000", "train.workers=1"):
        args += ["--set", setting]
    _torchrun(ranks, "bbox_sub.train", args, threads, work / f"detector_{ranks}.log")
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    seconds = {r["step"]: r["seconds"] for r in rows if r["event"] == "train"}
    return steps * batch / (seconds[warmup + steps] - seconds[warmup]), batch


def embedder_rate(root: Path, work: Path, ranks: int, per_rank: int, config: str, device: str,
                  threads: int | None) -> tuple[float, int, int]:
    """Crops per second over the second epoch, the global batch and that epoch's steps."""
    batch = per_rank * ranks
    out = work / f"embedder_{ranks}"
    shutil.rmtree(out, ignore_errors=True)
    args = ["--config", config, "--data", str(root), "--out", str(out), "--no-progress"]
    for setting in ("train.epochs=2", f"train.batch_size={batch}", f"train.device={device}", "data.augment=false"):
        args += ["--set", setting]
    _torchrun(ranks, "metric_sub.train", args, threads, work / f"embedder_{ranks}.log")
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = epochs[-1]["step"] - epochs[-2]["step"]
    return steps * batch / epochs[-1]["train_seconds"], batch, steps


def _generate(root: Path, items: int) -> None:
    if (root / "image").is_dir():
        return
    from dataset.synth import generate
    from dataset.synth.config import SynthConfig

    generate(root, SynthConfig(items=items, seed=5, shop_size=256, shop_images_min=2, shop_images_max=3,
                               clip_frames=161, clip_width=256, clip_height=448, uncatalogued_share=0.0,
                               absent_start_share=0.0, clutter=1), workers=2, contact_sheet=False)


def main(argv: Sequence[str] | None = None) -> int:
    gpus = torch.cuda.device_count()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+",
                        default=list(range(1, gpus + 1)) if gpus else [1, 2])
    parser.add_argument("--models", nargs="+", default=["detector", "embedder"], choices=["detector", "embedder"])
    parser.add_argument("--detector-config", default="tiny")
    parser.add_argument("--embedder-config", default="tiny")
    parser.add_argument("--detector-batch", type=int, default=2, help="images per rank per step")
    parser.add_argument("--embedder-batch", type=int, default=4, help="crops per rank per step")
    parser.add_argument("--threads-per-rank", type=int, default=1, help="intra-op threads per CPU rank")
    parser.add_argument("--steps", type=int, default=12, help="timed detector steps")
    parser.add_argument("--warmup", type=int, default=3, help="detector steps before timing")
    parser.add_argument("--items", type=int, default=16, help="items in the generated root")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench" / "train_scaling")
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / f"train_scaling_{'cuda' if gpus else 'cpu'}.json")
    args = parser.parse_args(argv)
    device = "cuda" if gpus else "cpu"
    args.work.mkdir(parents=True, exist_ok=True)
    root = args.work / "root"
    _generate(root, args.items)
    rows = []
    for model in args.models:
        base = None
        for ranks in args.ranks:
            threads = args.threads_per_rank if device == "cpu" else None
            if model == "detector":
                rate, batch = detector_rate(root, args.work, ranks, args.detector_batch, args.steps, args.warmup,
                                            args.detector_config, device, threads)
                per_rank, steps = args.detector_batch, args.steps
            else:
                rate, batch, steps = embedder_rate(root, args.work, ranks, args.embedder_batch,
                                                   args.embedder_config, device, threads)
                per_rank = args.embedder_batch
            base = base or rate
            rows.append({"model": model, "device": device, "ranks": ranks, "batch_per_rank": per_rank,
                         "global_batch": batch, "threads_per_rank": threads, "steps": steps,
                         "samples_per_s": round(rate, 2), "efficiency": round(rate / (ranks * base), 3)})
            print_table(rows[-1:], COLUMNS)
    print_table(rows, COLUMNS)
    extra = {"detector_config": args.detector_config, "embedder_config": args.embedder_config,
             "backend": "nccl" if gpus else "gloo", "precision": "fp32" if device == "cpu" else "config",
             "items": args.items, "scaling": "weak (fixed batch per rank)"}
    print(write_result(args.out, "train_scaling", rows, extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
