"""Training the detector through the config's stages, with exact resume.

``python -m bbox_sub.train --config seed_vovnet99 --data ROOT [ROOT ...] --out DIR [--set key=value ...]``

Each stage starts from the previous stage's weights with a fresh optimizer,
as the seed did. ``DIR/last.pth`` holds everything a resumed run needs
(weights, optimizer, stage, step, RNG states); a rerun with the same ``--out``
continues from it and reaches the same weights as an uninterrupted run.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from bbox_sub.config import DetectorConfig, StageConfig, load_detector_config
from bbox_sub.data import (Sample, StreamSampler, TrainSet, frame_samples, image_samples, keep_list,
                           split_ids)
from bbox_sub.detect import BatchDetector
from bbox_sub.evaluate import evaluate
from bbox_sub.model import Detector, build_detector
from dataset.errors import DataError, IssueLog
from dataset.layout import load_dataset
from runtime.checkpoint import load_checkpoint, save_checkpoint
from runtime.device import pick_device
from runtime.precision import autocast
from runtime.schedule import lr_factor
from runtime.seeding import rng_state, seed_everything, set_rng_state

log = logging.getLogger(__name__)

LAST = "last.pth"
FINAL = "model_final.pth"


def _spread(samples: list[Sample], limit: int) -> list[Sample]:
    """At most ``limit`` samples, evenly spaced so that every part of the split is represented."""
    if len(samples) <= limit:
        return samples
    step = len(samples) / limit
    return [samples[int(i * step)] for i in range(limit)]


def prepare_samples(cfg: DetectorConfig, roots: list[Path], val_roots: list[Path] | None, cache_dir: Path,
                    issues: IssueLog) -> tuple[list[Sample], list[Sample]]:
    """Training samples, and validation samples from ``val_roots`` or from ids held out of ``roots``."""
    tc = cfg.train
    data = load_dataset(roots, issues)
    if val_roots:
        train_items, train_videos = set(data.items), set(data.videos)
        val_data = load_dataset(val_roots, issues)
        val_items, val_videos = set(val_data.items), set(val_data.videos)
    else:
        val_items, val_videos = split_ids(data, tc.val_fraction, tc.seed)
        train_items, train_videos = set(data.items) - val_items, set(data.videos) - val_videos
        val_data = data
    train = image_samples(data, train_items) + frame_samples(data, cache_dir, issues, train_videos, tc.workers or 1)
    val_clips = sorted(v for v in val_videos if val_data.videos[v].frames)[:tc.val_max_clips]
    val = (_spread(image_samples(val_data, val_items), tc.val_max_images)
           + frame_samples(val_data, cache_dir, issues, set(val_clips), tc.workers or 1))
    return train, val


class Trainer:
    """One training run in ``out``; holds the model and writes checkpoints and the JSON-lines log."""

    def __init__(self, cfg: DetectorConfig, out: Path, device: torch.device, train: list[Sample],
                 val: list[Sample]) -> None:
        self.cfg, self.out, self.device = cfg, out, device
        self.train_samples, self.val_samples = train, val
        self.channels_last = cfg.train.channels_last and device.type == "cuda"
        self.precision = cfg.train.precision if device.type == "cuda" else "fp32"
        """Mixed precision trains on CUDA only: bf16 steps on a CPU are untried, so CPU runs stay as measured."""
        seed_everything(cfg.train.seed)
        self.model: Detector = build_detector(cfg.model).to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.log_path = out / "log.jsonl"

    def _log(self, record: dict[str, Any]) -> None:
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _checkpoint(self, stage: int, step: int, optimizer: torch.optim.Optimizer | None,
                    scaler: torch.amp.GradScaler | None) -> None:
        save_checkpoint(self.out / LAST, {
            "model": self.model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
            "scaler": scaler.state_dict() if scaler else None, "stage": stage, "step": step,
            "rng": rng_state(), "config": self.cfg.model_dump(mode="json")})

    def _save_weights(self, name: str) -> Path:
        return save_checkpoint(self.out / name, {"model": self.model.state_dict(),
                                                 "config": self.cfg.model_dump(mode="json")})

    def validate(self, stage: int, step: int) -> dict[str, float] | None:
        if not self.val_samples:
            return None
        infer = self.cfg.infer
        self.model.eval()
        detector = BatchDetector(self.model, self.device, self.precision, self.channels_last,
                                 fuse=False)
        metrics = evaluate(detector, self.val_samples, (infer.image_short_side, infer.image_max_size),
                           (infer.video_short_side, infer.video_max_size))
        self.model.train()
        self._log({"event": "val", "stage": stage, "step": step, **metrics})
        return metrics

    def run(self, fresh: bool = False, stop_after: int | None = None) -> Path | None:
        """Train every stage; returns the final weights, or ``None`` when ``stop_after`` steps ended the run early."""
        tc = self.cfg.train
        resume = None
        if not fresh and (self.out / LAST).is_file():
            resume = load_checkpoint(self.out / LAST, self.device, weights_only=False)
        if resume is not None:
            self.model.load_state_dict(resume["model"])
            log.info("resuming at stage %d step %d", resume["stage"], resume["step"])
        steps_run = 0
        for index, raw_stage in enumerate(tc.stages):
            if resume is not None and index < resume["stage"]:
                continue
            stage = tc.scaled(raw_stage)
            here = resume if resume is not None and resume["stage"] == index else None
            steps_run, stopped = self._run_stage(index, stage, here, steps_run, stop_after)
            if stopped:
                return None
            self._save_weights(f"{stage.name}_final.pth")
            self._checkpoint(index + 1, 0, None, None)
        return self._save_weights(FINAL)

    def _run_stage(self, index: int, stage: StageConfig, resume: dict | None, steps_run: int,
                   stop_after: int | None) -> tuple[int, bool]:
        tc = self.cfg.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=stage.base_lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
        scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        start = 0
        if resume is not None:
            start = resume["step"]
            if resume["optimizer"] is not None:
                optimizer.load_state_dict(resume["optimizer"])
            if scaler is not None and resume.get("scaler"):
                scaler.load_state_dict(resume["scaler"])
            set_rng_state(resume["rng"])
        if start >= stage.iterations:
            return steps_run, False
        dataset = TrainSet(self.train_samples, stage.min_sizes, stage.max_size, tc.flip_prob, tc.seed + index)
        loader = DataLoader(dataset, batch_size=stage.batch_size,
                            sampler=StreamSampler(len(dataset), tc.seed + index, start * stage.batch_size),
                            num_workers=tc.workers, collate_fn=keep_list, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(tc.seed))
        self.model.train()
        progress = tqdm(total=stage.iterations, initial=start, desc=stage.name, dynamic_ncols=True)
        began = time.monotonic()
        for step, batch in zip(range(start, stage.iterations), loader):
            factor = lr_factor(step, stage.iterations, stage.warmup_iters, stage.schedule, stage.warmup_factor,
                               stage.milestones, stage.gamma)
            for group in optimizer.param_groups:
                group["lr"] = stage.base_lr * factor
            losses = self._step(batch, optimizer, scaler)
            done = step + 1
            total = sum(losses.values())
            if not math.isfinite(total):
                raise FloatingPointError(f"stage {stage.name} step {done}: loss is {total} ({losses})")
            progress.update(1)
            progress.set_postfix(loss=f"{total:.3f}", lr=f"{stage.base_lr * factor:.2e}")
            if done % tc.log_every == 0 or done == stage.iterations or step == start:
                self._log({"event": "train", "stage": index, "step": done, "lr": stage.base_lr * factor,
                           "loss": total, **losses, "seconds": round(time.monotonic() - began, 2)})
            if done % tc.checkpoint_every == 0 or done == stage.iterations:
                self._checkpoint(index, done, optimizer, scaler)
            if done % tc.eval_every == 0 or done == stage.iterations:
                metrics = self.validate(index, done)
                if metrics:
                    progress.write(f"{stage.name} step {done}: AP {metrics['ap']:.3f} AP50 {metrics['ap50']:.3f}")
            steps_run += 1
            if stop_after is not None and steps_run >= stop_after:
                progress.close()
                return steps_run, True
        progress.close()
        return steps_run, False

    def _step(self, batch: list[dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler | None) -> dict[str, float]:
        device = self.device
        images = self.model.preprocess([b["image"].to(device, non_blocking=True) for b in batch],
                                       self.channels_last)
        targets = [{"boxes": b["boxes"].to(device), "labels": b["labels"].to(device)} for b in batch]
        with autocast(device, self.precision):
            losses = self.model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if self.cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return {k: float(v.detach()) for k, v in losses.items()}


def train(cfg: DetectorConfig, roots: list[Path], out: Path, val_roots: list[Path] | None = None,
          device: str = "auto", fresh: bool = False, stop_after: int | None = None) -> Path | None:
    """Prepare samples, train all stages into ``out``; returns ``out/model_final.pth`` (``None`` if stopped early)."""
    out.mkdir(parents=True, exist_ok=True)
    issues = IssueLog()
    train_samples, val_samples = prepare_samples(cfg, roots, val_roots, cfg.train.frame_cache or out / "frames",
                                                 issues)
    for issue in issues.issues:
        log.warning("%s", issue)
    trainer = Trainer(cfg, out, pick_device(device), train_samples, val_samples)
    trainer._log({"event": "start", "train_samples": len(train_samples), "val_samples": len(val_samples),
                  "skipped": [str(i) for i in issues.errors]})
    return trainer.run(fresh, stop_after)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a config name (tiny, vovnet39, ...) or a YAML path")
    parser.add_argument("--data", required=True, nargs="+", type=Path, help="training dataset roots")
    parser.add_argument("--val", nargs="*", type=Path, help="validation roots (default: hold out ids of --data)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fresh", action="store_true", help="ignore OUT/last.pth and start over")
    parser.add_argument("--stop-after", type=int, help="stop (without saving) after this many steps of this run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        cfg = load_detector_config(args.config, args.set)
        final = train(cfg, args.data, args.out, args.val, args.device, args.fresh, args.stop_after)
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(final if final else f"stopped early; rerun with --out {args.out} to resume")


if __name__ == "__main__":
    main()
