"""Training of one embedder on ground-truth crops with ArcFace, as the seed (section 4), resumable.

``python -m metric_sub.train --config CFG --data ROOT [ROOT ...] --out DIR [--val ROOT ...] [--set k=v]``

``DIR`` receives ``last.pt`` (written every epoch, and every
``--checkpoint-every`` steps), ``best.pt`` (the epoch with the best
validation recall@1; the last epoch when there is no validation set),
``identities.json`` and ``metrics.jsonl``. Running the same command again
resumes from ``last.pt`` and continues exactly where it stopped: the batch
order and the augmentation are functions of (seed, epoch, sample), and the
optimiser, scaler, memory queue and random states are restored.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset.errors import IssueLog
from dataset.identity import IdentityEncoder
from dataset.layout import load_dataset
from metric_sub.augment import Augmenter
from metric_sub.config import EmbedderConfig, load_embedder_config
from metric_sub.data import CropCache, CropDataset, CropRef, GroupedBatchSampler, ground_truth_crops
from metric_sub.embed import ModelRunner
from metric_sub.evaluate import retrieval_report
from metric_sub.model import ArcFaceHead, Embedder, build_embedder
from runtime.checkpoint import load_checkpoint, save_checkpoint
from runtime.device import pick_device
from runtime.precision import autocast
from runtime.schedule import lr_factor
from runtime.seeding import rng_state, seed_everything, set_rng_state

log = logging.getLogger(__name__)

BEST_METRIC = "recall@1"


@dataclass
class ValidationSet:
    """Validation crops, read once and kept in memory for every epoch's evaluation."""

    refs: list[CropRef]
    crops: list[np.ndarray]

    @classmethod
    def load(cls, roots: Sequence[Path], config: EmbedderConfig, issues: IssueLog, workers: int) -> "ValidationSet":
        refs = ground_truth_crops(load_dataset(roots, issues), config.data.min_frame)
        cache = CropCache(refs, issues, config.data.max_crop_side, "memory", workers=workers, progress=False)
        kept = [refs[i] for i in cache.available]
        return cls(kept, [cache[i] for i in cache.available])

    def evaluate(self, model: Embedder, config: EmbedderConfig, device: torch.device, dtype: str) -> dict[str, float]:
        """Recall of ``model`` in the precision it trains in (so a CPU run validates in float32 as it trains)."""
        settings = config.embed.model_copy(update={"compile": False, "cuda_graphs": False, "dtype": dtype,
                                                   "batch_size": config.train.val_batch_size})
        runner = ModelRunner(config.model_copy(update={"embed": settings}), model, device, fuse=False)
        embeddings = runner.embed_crops(self.crops, [r.group for r in self.refs])
        model.train()
        return retrieval_report(embeddings, [r.kind for r in self.refs], [r.instance_id for r in self.refs])


class Trainer:
    """Owns the model, head, optimiser and the position in the schedule; see the module docstring."""

    def __init__(self, config: EmbedderConfig, data_roots: Sequence[Path | str], out_dir: Path | str,
                 val_roots: Sequence[Path | str] = (), progress: bool = True,
                 checkpoint_every: int = 0) -> None:
        self.config = config
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.checkpoint_every = checkpoint_every
        self.issues = IssueLog()
        train = config.train
        self.device = pick_device(train.device)
        seed_everything(train.seed)

        refs = ground_truth_crops(load_dataset(data_roots, self.issues), config.data.min_frame)
        if not refs:
            raise ValueError(f"no ground-truth crops with instance_id != 0 in {list(map(str, data_roots))}")
        self.encoder = IdentityEncoder(r.instance_id for r in refs)
        cache = CropCache(refs, self.issues, config.data.max_crop_side, config.data.cache,
                          self.out / "crop_cache", workers=max(train.workers, 2), progress=progress)
        labels = [self.encoder.encode(refs[i].instance_id) for i in cache.available]
        augmenter = Augmenter(train.seed) if config.data.augment else None
        self.dataset = CropDataset(refs, cache, cache.available, labels, config.bucket_sizes(), augmenter)
        self.sampler = GroupedBatchSampler(self.dataset.groups(), train.batch_size, shuffle=True,
                                           drop_uneven=True, seed=train.seed)
        self.epoch_batches = [len(self.sampler.batches(e)) for e in range(train.epochs)]
        self.total_steps = sum(self.epoch_batches)
        if self.total_steps == 0:
            raise ValueError(f"{len(self.dataset)} crops make no full batch of {train.batch_size} in any bucket")
        self.warmup_steps = int(train.warmup * self.total_steps)
        self.validation = (ValidationSet.load([Path(r) for r in val_roots], config, self.issues, 2)
                           if val_roots else None)

        self.model = build_embedder(config).to(self.device)
        self.head = ArcFaceHead(config.loss, len(self.encoder), config.model.embedding_size).to(self.device)
        self.channels_last = self.device.type == "cuda"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        params = list(self.model.parameters()) + list(self.head.parameters())
        self.optimizer = torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
        self.amp = train.amp if self.device.type == "cuda" else "fp32"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best: dict[str, Any] | None = None
        self.resumed_rng: dict[str, Any] | None = None
        self.encoder.save(self.out / "identities.json")

    # -- checkpoints -------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "head": self.head.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "best": self.best, "rng": rng_state(), "identities": self.encoder.ids,
                "config": self.config.model_dump(mode="json")}

    def save(self, name: str = "last.pt") -> Path:
        return save_checkpoint(self.out / name, self.state())

    def resume(self, path: Path) -> None:
        state = load_checkpoint(path, self.device, weights_only=False)
        if state["identities"] != self.encoder.ids:
            raise ValueError(f"{path} was trained on other identities than {self.out / 'identities.json'}: "
                             "same data roots are needed to resume")
        self.model.load_state_dict(state["model"])
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best = state["best"]
        self.resumed_rng = state["rng"]
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)

    # -- training ----------------------------------------------------------------------------------------------
    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        train = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = train.lr * lr_factor(self.step, self.total_steps, self.warmup_steps, train.schedule)
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.device, non_blocking=True)
        with autocast(self.device, self.amp):
            features = self.model(images)
        loss = self.head(features, labels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    def _loader(self, batches: list[list[int]]) -> DataLoader:
        workers = self.config.train.workers
        return DataLoader(self.dataset, batch_sampler=batches, num_workers=workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def run(self, stop_after: int | None = None) -> dict[str, Any] | None:
        """Train to the end (or for ``stop_after`` more steps); returns the best validation record."""
        if (self.out / "last.pt").is_file():
            self.resume(self.out / "last.pt")
        budget = stop_after if stop_after is not None else self.total_steps
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.config.name, unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        history = self.out / "metrics.jsonl"
        while self.epoch < self.config.train.epochs and budget > 0:
            self.dataset.epoch = self.epoch
            batches = self.sampler.batches(self.epoch)[self.batch_in_epoch:]
            if self.resumed_rng is not None and self.batch_in_epoch == 0:
                set_rng_state(self.resumed_rng)
                self.resumed_rng = None
            iterator = iter(self._loader(batches))
            if self.resumed_rng is not None:  # mid-epoch: the loader's own seed draw happened before the save
                set_rng_state(self.resumed_rng)
                self.resumed_rng = None
            losses = []
            for images, labels in iterator:
                losses.append(self.train_step(images, labels))
                self.batch_in_epoch += 1
                budget -= 1
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self.save()
                if budget == 0:
                    break
            if self.batch_in_epoch < self.epoch_batches[self.epoch]:
                self.save()
                break
            record = {"epoch": self.epoch, "step": self.step, "loss": float(np.mean(losses)) if losses else None}
            if self.validation is not None:
                record |= self.validation.evaluate(self.model, self.config, self.device, self.amp)
            self.epoch += 1
            self.batch_in_epoch = 0
            improved = self.best is None or self.validation is None or record[BEST_METRIC] > self.best[BEST_METRIC]
            if improved:
                self.best = record
            self.save()
            if improved:
                self.save("best.pt")
            with history.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            log.info("epoch %d: %s", record["epoch"], ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                                                                 if isinstance(v, float)))
        bar.close()
        return self.best


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m metric_sub.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="embedder config (path or bundled name, e.g. lite0)")
    parser.add_argument("--data", nargs="+", required=True, type=Path, help="training dataset root(s)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (resumed when it holds last.pt)")
    parser.add_argument("--val", nargs="*", default=[], type=Path, help="validation dataset root(s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. train.epochs=3")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="also save last.pt every N steps")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after N more steps (resume later)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    config = load_embedder_config(args.config, args.overrides)
    trainer = Trainer(config, args.data, args.out, args.val, progress=not args.no_progress,
                      checkpoint_every=args.checkpoint_every)
    best = trainer.run(args.stop_after)
    for issue in trainer.issues.issues:
        print(issue, file=sys.stderr)
    print(f"step {trainer.step}/{trainer.total_steps}; best: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
