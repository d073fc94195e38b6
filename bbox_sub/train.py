"""Training the detector through the config's stages, with exact resume, on one process or on many.

``python -m bbox_sub.train --config seed_vovnet99 --data ROOT [ROOT ...] --out DIR [--set key=value ...]``

Each stage starts from the previous stage's weights with a fresh optimizer,
as the seed did. ``DIR/last.pth`` holds everything a resumed run needs
(weights, optimizer, scaler, stage, step, every rank's RNG states); a rerun
with the same ``--out`` continues from it and reaches the same weights as an
uninterrupted run.

Several GPUs or machines (DistributedDataParallel; NCCL on GPUs, gloo on CPUs)::

    torchrun --nproc_per_node=4 -m bbox_sub.train --config seed_vovnet99 --data ROOT --out DIR
    torchrun --nnodes=2 --node_rank=K --nproc_per_node=8 --rdzv-backend=c10d \
        --rdzv-endpoint=HOST:29400 --rdzv-id=JOB -m bbox_sub.train --config ... --out SHARED_DIR

Each stage's ``batch_size`` and ``base_lr`` are those of the global batch
(all ranks and ``train.accumulation`` steps together): every step splits the
global batch into equal contiguous parts, one per rank (and per accumulation
step), so the same config trains the same samples for the same number of
steps on 1 or N processes; with ``model.norm: sync`` (or ``frozen``, the
seed's) the gradients are those of one process up to rounding. Scaling rule
for a different global batch: multiply ``base_lr`` by the batch's factor
(linear scaling, Goyal et al. 2017) and divide ``iterations``, warmup and
milestones by it (``train.iteration_scale``); e.g. the seed's stage 1
(batch 4, 0.003, 60k) on 8 GPUs with 2 images each: batch 16, 0.012, 15k.

Rank 0 alone writes checkpoints, the log and the progress bar, and
validates while the others wait; ``--out`` must be one shared folder for all
machines. A picture that cannot be read is reported (warning and log) and
replaced by the next readable sample, on whichever rank meets it, so ranks
never disagree on how many samples a step has.
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
from bbox_sub.sampling import seed_sampling
from dataset.errors import DataError, IssueLog
from dataset.layout import load_dataset
from runtime.checkpoint import load_checkpoint, save_checkpoint
from runtime.distributed import (Distributed, barrier, broadcast_object, chunks, from_environment,
                                 gather_objects, mean_over_ranks, micro_batch_size, no_sync, shutdown,
                                 sync_batch_norms, wrap)
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
    """One training run in ``out``; holds the model and writes checkpoints and the JSON-lines log.

    ``group`` is this process's place among the ranks (one process when left out); the model then trains
    wrapped in DistributedDataParallel, and only rank 0 writes to ``out``.
    """

    def __init__(self, cfg: DetectorConfig, out: Path, device: torch.device, train: list[Sample],
                 val: list[Sample], *, group: Distributed | None = None) -> None:
        self.cfg, self.out, self.device = cfg, out, device
        self.group = group or Distributed(device=device)
        self.train_samples, self.val_samples = train, val
        self.channels_last = cfg.train.channels_last and device.type == "cuda"
        self.precision = cfg.train.precision if device.type == "cuda" else "fp32"
        """Mixed precision trains on CUDA only: bf16 steps on a CPU are untried, so CPU runs stay as measured."""
        seed_everything(cfg.train.seed)
        model = build_detector(cfg.model)
        if cfg.model.norm == "sync" and self.group.enabled:
            model = sync_batch_norms(model, device)
        self.model: Detector = model.to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = wrap(self.model, self.group)
        """What the training steps call: the model itself, or its DistributedDataParallel wrapper."""
        self.log_path = out / "log.jsonl"

    def _log(self, record: dict[str, Any]) -> None:
        if not self.group.main:
            return
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _checkpoint(self, stage: int, step: int, optimizer: torch.optim.Optimizer | None,
                    scaler: torch.amp.GradScaler | None) -> None:
        """Called on every rank (each hands rank 0 its RNG states); rank 0 writes."""
        states = gather_objects(rng_state())
        if self.group.main:
            save_checkpoint(self.out / LAST, {
                "model": self.model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
                "scaler": scaler.state_dict() if scaler else None, "stage": stage, "step": step,
                "rng": states[0], "rng_ranks": states, "world_size": self.group.world_size,
                "config": self.cfg.model_dump(mode="json")})

    def _save_weights(self, name: str) -> Path:
        path = self.out / name
        if self.group.main:
            save_checkpoint(path, {"model": self.model.state_dict(), "config": self.cfg.model_dump(mode="json")})
        return path

    def _rank_rng(self, resume: dict) -> dict:
        """This rank's saved RNG states; rank 0's when the run was saved with another number of ranks."""
        states = resume.get("rng_ranks")
        if states and len(states) == self.group.world_size:
            return states[self.group.rank]
        if self.group.enabled:
            log.warning("resuming %d ranks from a run of %s: RNG states of rank 0 for all", self.group.world_size,
                        resume.get("world_size", 1))
        return resume["rng"]

    def validate(self, stage: int, step: int) -> dict[str, float] | None:
        """COCO AP on the validation samples, logged."""
        if not self.val_samples:
            return None
        infer = self.cfg.infer
        self.model.eval()
        detector = BatchDetector(self.model, self.device, precision=self.precision,
                                 channels_last=self.channels_last, fuse=False)
        metrics = evaluate(detector, self.val_samples, (infer.image_short_side, infer.image_max_size),
                           (infer.video_short_side, infer.video_max_size))
        self.model.train()
        self._log({"event": "val", "stage": stage, "step": step, **metrics})
        return metrics

    def _validate_on_main(self, stage: int, step: int) -> dict[str, float] | None:
        """Rank 0 validates while the other ranks wait for it."""
        metrics = self.validate(stage, step) if self.group.main else None
        barrier()
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
        tc, group = self.cfg.train, self.group
        micro_batch_size(stage.batch_size, group.world_size, tc.accumulation, f"stage {stage.name}")
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
            set_rng_state(self._rank_rng(resume))
        if start >= stage.iterations:
            return steps_run, False
        dataset = TrainSet(self.train_samples, stage.min_sizes, stage.max_size, tc.flip_prob, tc.seed + index)
        sampler = StreamSampler(len(dataset), tc.seed + index, start * stage.batch_size,
                                batch_size=stage.batch_size, rank=group.rank, world_size=group.world_size)
        loader = DataLoader(dataset, batch_size=stage.batch_size // group.world_size, sampler=sampler,
                            num_workers=tc.workers, collate_fn=keep_list, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(tc.seed))
        self.model.train()
        progress = tqdm(total=stage.iterations, initial=start, desc=stage.name, dynamic_ncols=True,
                        disable=not group.main)
        began = time.monotonic()
        for step, batch in zip(range(start, stage.iterations), loader):
            factor = lr_factor(step, stage.iterations, stage.warmup_iters, stage.schedule, stage.warmup_factor,
                               stage.milestones, stage.gamma)
            for group_ in optimizer.param_groups:
                group_["lr"] = stage.base_lr * factor
            self._report_skipped(index, step + 1, batch)
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
                metrics = self._validate_on_main(index, done)
                if metrics:
                    progress.write(f"{stage.name} step {done}: AP {metrics['ap']:.3f} AP50 {metrics['ap50']:.3f}")
            steps_run += 1
            if stop_after is not None and steps_run >= stop_after:
                progress.close()
                return steps_run, True
        progress.close()
        return steps_run, False

    def _report_skipped(self, stage: int, step: int, batch: list[dict[str, Any]]) -> None:
        """Warn about pictures that could not be read (on the rank that met them) and log them on rank 0."""
        skipped = [reason for sample in batch for reason in sample.get("skipped", ())]
        for reason in skipped:
            log.warning("rank %d stage %d step %d: skipped %s", self.group.rank, stage, step, reason)
        everywhere = [reason for part in gather_objects(skipped) for reason in part] if self.group.enabled \
            else skipped
        if everywhere:
            self._log({"event": "skipped", "stage": stage, "step": step, "samples": everywhere})

    def _step(self, batch: list[dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler | None) -> dict[str, float]:
        """One optimizer step on this rank's part of the global batch, in ``train.accumulation`` passes; the
        losses returned are the global batch's (averaged over passes and ranks)."""
        device = self.device
        parts = chunks(batch, self.cfg.train.accumulation)
        optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for number, part in enumerate(parts):
            images = self.model.preprocess([b["image"].to(device, non_blocking=True) for b in part],
                                           self.channels_last)
            targets = [{"boxes": b["boxes"].to(device), "labels": b["labels"].to(device)} for b in part]
            seed_sampling(self.model, [b["sampling_seed"] for b in part])
            with no_sync(self.net, number < len(parts) - 1):
                with autocast(device, self.precision):
                    losses = self.net(images, targets)
                loss = sum(losses.values()) / len(parts)
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach()) / len(parts)
        if scaler is not None:
            scaler.unscale_(optimizer)
        if self.cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if not self.group.enabled:
            return totals
        averaged = mean_over_ranks(torch.tensor(list(totals.values()), dtype=torch.float64, device=device))
        return dict(zip(totals, averaged.tolist()))


def train(cfg: DetectorConfig, roots: list[Path], out: Path, val_roots: list[Path] | None = None,
          device: str = "auto", fresh: bool = False, stop_after: int | None = None, *,
          group: Distributed | None = None) -> Path | None:
    """Prepare samples, train all stages into ``out``; returns ``out/model_final.pth`` (``None`` if stopped early).

    ``group`` defaults to torchrun's environment (``runtime.distributed.from_environment``): one process on
    ``device`` when started without torchrun. Rank 0 prepares the samples (decoding clip frames into the
    frame cache) and hands the lists to the other ranks, so that all ranks train on the same list.
    """
    group = group or from_environment(device)
    if group.main:
        out.mkdir(parents=True, exist_ok=True)
        issues = IssueLog()
        samples = prepare_samples(cfg, roots, val_roots, cfg.train.frame_cache or out / "frames", issues)
        for issue in issues.issues:
            log.warning("%s", issue)
        skipped = [str(i) for i in issues.errors]
    else:
        samples, skipped = None, []
    train_samples, val_samples = broadcast_object(samples)
    trainer = Trainer(cfg, out, group.device, train_samples, val_samples, group=group)
    trainer._log({"event": "start", "train_samples": len(train_samples), "val_samples": len(val_samples),
                  "world_size": group.world_size, "skipped": skipped})
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
        group = from_environment(args.device)
        try:
            final = train(cfg, args.data, args.out, args.val, args.device, args.fresh, args.stop_after, group=group)
        finally:
            shutdown()
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    if group.main:
        print(final if final else f"stopped early; rerun with --out {args.out} to resume")


if __name__ == "__main__":
    main()
