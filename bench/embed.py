"""Embedder throughput: crops per second per config and for the ensemble, at the seed's bucket sizes.

``python -m bench.embed --configs tiny,lite0 --repeats 2`` (CPU) or, on a GPU,
``python -m bench.embed --configs seed_b5a,seed_b5b,seed_b6,seed_b7 --crops-per-bucket 512 --compile --cuda-graphs``.

Crops are random pixels already at their bucket size, spread evenly over the
12 buckets, so the number is the model path (batching, transfer, autocast,
forward) without decoding. Random weights are used where a config has no
ImageNet initialisation: speed does not depend on the values.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bench.common import measure, print_table, write_result
from metric_sub.config import load_embedder_config
from metric_sub.embed import ModelRunner, embed_crops
from metric_sub.model import build_embedder
from runtime.device import pick_device

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_crops(sizes: Sequence[tuple[int, int]], per_bucket: int, seed: int = 0) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    crops, groups = [], []
    for group, (width, height) in enumerate(sizes):
        for _ in range(per_bucket):
            crops.append(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
            groups.append(group)
    return crops, groups


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,lite0", help="comma-separated config names or paths")
    parser.add_argument("--crops-per-bucket", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=None, help="default: each config's embed.batch_size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"],
                        help="autocast dtype (CUDA; bf16 also on CPUs with bf16 instructions)")
    parser.add_argument("--compile", action="store_true", help="torch.compile per bucket shape (CUDA)")
    parser.add_argument("--cuda-graphs", action="store_true", help="compile in reduce-overhead mode (CUDA graphs)")
    parser.add_argument("--native-sizes", action="store_true", help="keep each config's bucket_scale")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "embed.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    overrides = [f"embed.dtype={args.dtype}", f"embed.compile={str(args.compile).lower()}",
                 f"embed.cuda_graphs={str(args.cuda_graphs).lower()}"]
    if args.batch_size:
        overrides.append(f"embed.batch_size={args.batch_size}")
    if not args.native_sizes:
        overrides.append("data.bucket_scale=1.0")
    runners = []
    for name in args.configs.split(","):
        config = load_embedder_config(name.strip(), overrides)
        runners.append(ModelRunner(config, build_embedder(config), device))

    rows = []
    crops, groups = synthetic_crops(runners[0].sizes, args.crops_per_bucket)
    for runner in runners:
        if runner.sizes != runners[0].sizes:
            crops, groups = synthetic_crops(runner.sizes, args.crops_per_bucket)
        seconds = measure(lambda: runner.embed_crops(crops, groups), repeats=args.repeats, warmup=1)
        rows.append({"config": runner.config.name, "backbone": runner.config.model.backbone,
                     "device": device.type, "dtype": runner.dtype, "batch": runner.config.embed.batch_size,
                     "compile": args.compile, "cuda_graphs": args.cuda_graphs, "crops": len(crops),
                     "seconds": round(seconds, 3), "crops_per_s": round(len(crops) / seconds, 1)})
    if len(runners) > 1 and all(r.sizes == runners[0].sizes for r in runners):
        seconds = measure(lambda: embed_crops(runners, crops, groups), repeats=args.repeats, warmup=0)
        rows.append({"config": "+".join(r.config.name for r in runners), "backbone": "ensemble",
                     "device": device.type, "dtype": runners[0].dtype, "batch": runners[0].config.embed.batch_size,
                     "compile": args.compile, "cuda_graphs": args.cuda_graphs, "crops": len(crops),
                     "seconds": round(seconds, 3), "crops_per_s": round(len(crops) / seconds, 1)})
    print_table(rows, ["config", "backbone", "device", "dtype", "batch", "compile", "cuda_graphs", "crops",
                       "seconds", "crops_per_s"])
    path = write_result(args.out, "embed", rows, {"crops_per_bucket": args.crops_per_bucket,
                                                  "repeats": args.repeats, "threads": torch.get_num_threads(),
                                                  "sizes": [list(s) for s in runners[0].sizes]})
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
