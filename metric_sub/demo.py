"""The bundled main job: synthetic data, brief training, the full pipeline on held-out clips, a score.

``python -m metric_sub.demo --out runs/demo`` needs no network and no GPU:

1. generates a train root and a held-out test root with disjoint item ids
   (``OUT/data/train``, ``OUT/data/test``; reused when already there);
2. trains the tiny detector from scratch and fine-tunes the ImageNet
   EfficientNet-Lite0 embedder briefly on the train root (``OUT/detector``,
   ``OUT/embedder``; reused when already trained). The tiny embedder is not
   used here: from random weights it learns nothing useful in a few minutes
   of CPU time (its crops all map to nearly one vector), while Lite0 starts
   from ImageNet features and needs only a short fine-tune;
3. runs the pipeline on the test root into ``OUT/run``: ``result.json``, the
   contest score, ``report.html``.

The data are small (short, low-resolution clips) so that all of it fits in a
few minutes on two CPU cores; the score says the pipeline works end to end,
not what the models reach with real training (see ``bench/e2e.py``).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

from bbox_sub.config import load_detector_config
from bbox_sub.train import train as train_detector
from dataset.errors import DataError
from dataset.synth import SynthConfig, ensure
from metric_sub.config import load_embedder_config
from metric_sub.pipeline import format_summary, run_pipeline
from metric_sub.train import Trainer

SYNTH = SynthConfig(shop_size=256, shop_images_min=2, shop_images_max=4, clip_frames=161, clip_width=180,
                    clip_height=320, uncatalogued_share=0.0, clutter=1)
DETECTOR_SET = ["infer.image_short_side=192", "infer.image_max_size=320", "infer.video_short_side=192",
                "infer.video_max_size=320", "infer.image_score_thresh=0.3", "infer.video_score_thresh=0.3",
                "model.detections_per_img=5", "infer.frames=[80, 100, 120, 140, 160]", "train.workers=0", "train.val_fraction=0", "train.eval_every=100000"]
DETECTOR_STAGE = ("train.stages=[{name: s1, iterations: %d, base_lr: 0.02, batch_size: 2, schedule: cosine, "
                  "warmup_iters: 5, min_sizes: [160, 192], max_size: 320}]")
EMBEDDER_SET = ["data.bucket_scale=0.5", "train.batch_size=8", "train.epochs=%d"]


def run(out: Path, train_items: int, test_items: int, detector_steps: int, embedder_epochs: int,
        seed: int) -> dict:
    """Steps 1-3 of the module docstring; returns the pipeline summary."""
    started = time.perf_counter()
    train_root, test_root = out / "data" / "train", out / "data" / "test"
    ensure(train_root, replace(SYNTH, items=train_items, seed=seed, first_id=1))
    ensure(test_root, replace(SYNTH, items=test_items, seed=seed + 1, first_id=50_001))
    print(f"data: {train_root} ({train_items} items), {test_root} ({test_items} held-out items) "
          f"in {time.perf_counter() - started:.0f} s", flush=True)

    det_cfg = load_detector_config("tiny", [DETECTOR_STAGE % detector_steps, *DETECTOR_SET])
    det_weights = out / "detector" / "model_final.pth"
    if not det_weights.is_file():
        train_detector(det_cfg, [train_root], out / "detector", device="cpu")
    emb_cfg = load_embedder_config("lite0", [*EMBEDDER_SET[:-1], EMBEDDER_SET[-1] % embedder_epochs])
    emb_weights = out / "embedder" / "best.pt"
    if not emb_weights.is_file():
        Trainer(emb_cfg, [train_root], out / "embedder").run()
    print(f"models ready after {time.perf_counter() - started:.0f} s", flush=True)

    result = run_pipeline(test_root, out / "run", (det_cfg, det_weights), [(emb_cfg, emb_weights)], device="auto")
    print(format_summary(result))
    print(f"main job finished in {time.perf_counter() - started:.0f} s")
    return result.summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m metric_sub.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    parser.add_argument("--train-items", type=int, default=16)
    parser.add_argument("--test-items", type=int, default=10)
    parser.add_argument("--detector-steps", type=int, default=300)
    parser.add_argument("--embedder-epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        run(args.out, args.train_items, args.test_items, args.detector_steps, args.embedder_epochs, args.seed)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
