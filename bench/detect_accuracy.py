"""Detector accuracy: train on a synthetic train split, report COCO AP50 and AP on a synthetic validation split.

``python -m bench.detect_accuracy [--config tiny] [--items 12] [--val-items 4] [--set key=value ...]``

The two splits come from ``dataset.synth`` with disjoint item ids and seeds
(or pass existing roots with ``--train``/``--val``). AP covers shop images
at the config's image test size and annotated clip frames at its frame size.
On a GPU, run the real configs with a shorter schedule, e.g.
``--config vovnet39 --items 200 --set train.iteration_scale=0.05``.
``--weights`` skips training and scores a trained checkpoint, e.g. under
other ``--set model.*`` or ``infer.*`` values than it was trained with.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bbox_sub.config import load_detector_config
from bbox_sub.data import frame_samples, image_samples
from bbox_sub.detect import BatchDetector
from bbox_sub.evaluate import detect_samples, score_detections
from bbox_sub.model import load_detector
from bbox_sub.train import train
from bench.common import print_table, synthetic_splits, write_result
from dataset.errors import IssueLog
from dataset.layout import load_dataset
from runtime.device import pick_device

RESULT = Path(__file__).resolve().parent / "results" / "detect_accuracy.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--val-items", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="small shop images and short 270x480 clips (CPU)")
    parser.add_argument("--train", nargs="*", type=Path, help="existing training roots instead of generating")
    parser.add_argument("--val", nargs="*", type=Path, help="existing validation roots instead of generating")
    parser.add_argument("--work", type=Path, help="folder for data and checkpoints (default: a temp folder)")
    parser.add_argument("--weights", type=Path, help="score these trained weights instead of training")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    cfg = load_detector_config(args.config, args.set)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        if args.val and (args.train or args.weights):
            train_roots, val_roots = args.train or [], args.val
        else:
            knobs = dict(shop_size=320, clip_frames=81, clip_width=270, clip_height=480) if args.small else {}
            train_root, val_root = synthetic_splits(work, args.items, args.val_items, args.seed, knobs)
            train_roots, val_roots = [train_root], [val_root]
        began = time.monotonic()
        final = args.weights or train(cfg, train_roots, work / "run", val_roots, args.device)
        train_seconds = None if args.weights else round(time.monotonic() - began, 1)
        assert final is not None
        device = pick_device(args.device)
        detector = BatchDetector(load_detector(cfg.model, final, device), device, precision=cfg.infer.precision,
                                 channels_last=cfg.infer.channels_last)
        issues = IssueLog()
        val_data = load_dataset(val_roots, issues)
        samples = image_samples(val_data) + frame_samples(val_data, work / "val_frames", issues)
        sizes = ((cfg.infer.image_short_side, cfg.infer.image_max_size),
                 (cfg.infer.video_short_side, cfg.infer.video_max_size))
        scored = detect_samples(detector, samples, *sizes)
        splits = [("val images", "image"), ("val videos", "video"), ("val all", None)]
        rows = [{"config": cfg.name, "split": split,
                 **score_detections([s for s in scored if kind in (None, s[0])])} for split, kind in splits]
    print_table(rows, ["config", "split", "pictures", "ap50", "ap"])
    iterations = None if args.weights else sum(cfg.train.scaled(s).iterations for s in cfg.train.stages)
    write_result(args.out, "detect_accuracy", rows, {
        "config": cfg.name, "overrides": args.set,
        "items": None if args.val else args.items, "val_items": None if args.val else args.val_items,
        "small": args.small, "iterations": iterations, "train_seconds": train_seconds,
        "weights": str(args.weights) if args.weights else "trained in this run",
        "device": device.type,
        "train_roots": [str(r) for r in train_roots] if args.train or args.weights else "generated"})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
