"""Training of one embedder on ground-truth crops with ArcFace, as the seed (section 4), resumable, on one
process or on many.

``python -m metric_sub.train --config CFG --data ROOT [ROOT ...] --out DIR [--val ROOT ...] [--set k=v]``

``DIR`` receives ``last.pt`` (written every epoch, and every
``--checkpoint-every`` steps), ``best.pt`` (the epoch with the best
validation recall@1; the last epoch when there is no validation set),
``identities.json`` and ``metrics.jsonl``. Running the same command again
resumes from ``last.pt`` and continues exactly where it stopped: the batch
order and the augmentation are functions of (seed, epoch, sample), and the
optimiser, scaler, memory queue and every rank's random states are restored.

Several GPUs or machines (DistributedDataParallel; NCCL on GPUs, gloo on CPUs)::

    torchrun --nproc_per_node=4 -m metric_sub.train --config seed_b5a --data ROOT --out DIR \
        --set data.cache=disk --set train.sync_bn=true
    torchrun --nnodes=2 --node_rank=K --nproc_per_node=8 --rdzv-backend=c10d \
        --rdzv-endpoint=HOST:29400 --rdzv-id=JOB -m metric_sub.train --config ... --out SHARED_DIR

``train.batch_size`` and ``train.lr`` are those of the global batch: each
one-bucket batch of the sampler is split into equal contiguous parts, one
per rank (and per ``train.accumulation`` step), so every rank gets the same
number of micro-batches, each of one bucket (one shape), and the same config
trains the same samples in the same steps on 1 or N processes; with
``train.sync_bn`` the gradients are those of one process up to rounding.
Scaling rule for a different global batch: the seed's Adam lr 3.5e-4 belongs
to batch 32 (24 for the B7); for a batch k times larger multiply the lr by
sqrt(k) (the usual rule for Adam; linear scaling overshoots it), and
the epochs stay as they are. The cross-batch memory gathers all ranks'
embeddings (``metric_sub.xbm``): it holds the global stream, as one process's.

Rank 0 alone writes checkpoints, the log and the progress bar, and validates
while the others wait; ``--out`` must be one shared folder for all machines.
Rank 0 extracts the crops first: with ``data.cache=disk`` the other ranks
read its cache, with ``memory`` each rank extracts its own. A crop a rank
could not read is skipped on every rank (the ranks train on the crops all of
them have), so the ranks never disagree on the batches.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
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
from metric_sub.xbm import gather_memory
from runtime.checkpoint import load_checkpoint, save_checkpoint
from runtime.distributed import (Distributed, broadcast_object, chunks, from_environment, gather_objects, main_first,
                                 mean_over_ranks, micro_batch_size, no_sync, rank_part, shutdown,
                                 sync_batch_norms, wrap)
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


class Objective(nn.Module):
    """The embedder and its ArcFace head as one module, the unit DistributedDataParallel synchronises."""

    def __init__(self, model: Embedder, head: ArcFaceHead, device: torch.device, amp: str) -> None:
        super().__init__()
        self.model, self.head = model, head
        self.device, self.amp = device, amp

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.amp):
            features = self.model(images)
        return self.head(features, labels)


class Trainer:
    """Owns the model, head, optimiser and the position in the schedule; see the module docstring.

    ``group`` is this process's place among the ranks; left out, it is torchrun's environment
    (``runtime.distributed.from_environment``), which is one process on ``train.device`` without torchrun.
    """

    def __init__(self, config: EmbedderConfig, data_roots: Sequence[Path | str], out_dir: Path | str,
                 val_roots: Sequence[Path | str] = (), progress: bool = True,
                 checkpoint_every: int = 0, *, group: Distributed | None = None) -> None:
        self.config = config
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        train = config.train
        self.group = group or from_environment(train.device)
        self.progress = progress and self.group.main
        self.checkpoint_every = checkpoint_every
        self.issues = IssueLog()
        self.device = self.group.device
        self.micro_batch = micro_batch_size(train.batch_size, self.group.world_size, train.accumulation,
                                            config.name)
        seed_everything(train.seed)

        refs = ground_truth_crops(load_dataset(data_roots, self.issues), config.data.min_frame)
        if not refs:
            raise ValueError(f"no ground-truth crops with instance_id != 0 in {list(map(str, data_roots))}")
        self.encoder = IdentityEncoder(r.instance_id for r in refs)
        with main_first(self.group):
            cache = CropCache(refs, self.issues, config.data.max_crop_side, config.data.cache,
                              self.out / "crop_cache", workers=max(train.workers, 2), progress=self.progress)
        available = self._common_crops(cache.available, refs)
        labels = [self.encoder.encode(refs[i].instance_id) for i in available]
        augmenter = Augmenter(train.seed) if config.data.augment else None
        self.dataset = CropDataset(refs, cache, available, labels, config.bucket_sizes(), augmenter)
        self.sampler = GroupedBatchSampler(self.dataset.groups(), train.batch_size, shuffle=True,
                                           drop_uneven=True, seed=train.seed)
        self.epoch_batches = [len(self.sampler.batches(e)) for e in range(train.epochs)]
        self.total_steps = sum(self.epoch_batches)
        if self.total_steps == 0:
            raise ValueError(f"{len(self.dataset)} crops make no full batch of {train.batch_size} in any bucket")
        self.warmup_steps = int(train.warmup * self.total_steps)
        self.validates = bool(val_roots)
        self.validation = (ValidationSet.load([Path(r) for r in val_roots], config, self.issues, 2)
                           if val_roots and self.group.main else None)
        """Rank 0 alone holds the validation crops and validates."""

        model = build_embedder(config)
        if train.sync_bn and self.group.enabled:
            model = sync_batch_norms(model, self.device)
        self.model = model.to(self.device)
        self.head = ArcFaceHead(config.loss, len(self.encoder), config.model.embedding_size).to(self.device)
        if self.group.enabled:
            gather_memory(self.head)
        self.channels_last = self.device.type == "cuda"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        params = list(self.model.parameters()) + list(self.head.parameters())
        self.optimizer = torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
        self.amp = train.amp if self.device.type == "cuda" else "fp32"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        self.net = wrap(Objective(self.model, self.head, self.device, self.amp), self.group)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best: dict[str, Any] | None = None
        self.resumed_rng: dict[str, Any] | None = None
        if self.group.main:
            self.encoder.save(self.out / "identities.json")

    def _common_crops(self, available: list[int], refs: Sequence[CropRef]) -> list[int]:
        """The crops every rank could read: a crop one rank failed on is skipped on all (and reported)."""
        if not self.group.enabled:
            return available
        common = sorted(set.intersection(*(set(part) for part in gather_objects(available))))
        for index in sorted(set(available) - set(common)):
            log.warning("rank %d: %s skipped, another rank could not read it", self.group.rank, refs[index].path)
        return common

    # -- checkpoints -------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a resume needs; called on every rank, since each hands in its RNG states."""
        states = gather_objects(rng_state())
        return {"model": self.model.state_dict(), "head": self.head.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "best": self.best, "rng": states[0], "rng_ranks": states, "world_size": self.group.world_size,
                "identities": self.encoder.ids, "config": self.config.model_dump(mode="json")}

    def save(self, name: str = "last.pt") -> Path:
        """Called on every rank; rank 0 writes."""
        state = self.state()
        if self.group.main:
            save_checkpoint(self.out / name, state)
        return self.out / name

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
        ranks = state.get("rng_ranks")
        if ranks and len(ranks) == self.group.world_size:
            self.resumed_rng = ranks[self.group.rank]
        else:
            if self.group.enabled:
                log.warning("resuming %d ranks from a run of %s: RNG states of rank 0 for all",
                            self.group.world_size, state.get("world_size", 1))
            self.resumed_rng = state["rng"]
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)

    # -- training ----------------------------------------------------------------------------------------------
    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimizer step on one batch (this rank's part of the global batch when there are several)."""
        return self.accumulated_step([(images, labels)])

    def accumulated_step(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """One optimizer step whose gradient adds up ``parts`` (equal micro-batches, ``train.accumulation`` of
        them) on every rank; returns the global batch's loss."""
        train = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = train.lr * lr_factor(self.step, self.total_steps, self.warmup_steps, train.schedule)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for number, (images, labels) in enumerate(parts):
            images = images.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(self.device, non_blocking=True)
            with no_sync(self.net, number < len(parts) - 1):
                loss = self.net(images, labels) / len(parts)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            total += float(loss.detach())
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1
        if self.group.enabled:
            total = float(mean_over_ranks(torch.tensor([total], dtype=torch.float64, device=self.device)))
        return total

    def _loader(self, batches: list[list[int]]) -> DataLoader:
        workers = self.config.train.workers
        return DataLoader(self.dataset, batch_sampler=batches, num_workers=workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _rank_batches(self, epoch: int, start: int) -> list[list[int]]:
        """This rank's micro-batches for the global batches of ``epoch`` from ``start`` on, in order."""
        accumulation = self.config.train.accumulation
        return [part for batch in self.sampler.batches(epoch)[start:]
                for part in chunks(rank_part(batch, self.group.rank, self.group.world_size), accumulation)]

    def run(self, stop_after: int | None = None) -> dict[str, Any] | None:
        """Train to the end (or for ``stop_after`` more steps); returns the best validation record."""
        if (self.out / "last.pt").is_file():
            self.resume(self.out / "last.pt")
        budget = stop_after if stop_after is not None else self.total_steps
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.config.name, unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        history = self.out / "metrics.jsonl"
        accumulation = self.config.train.accumulation
        while self.epoch < self.config.train.epochs and budget > 0:
            self.dataset.epoch = self.epoch
            batches = self._rank_batches(self.epoch, self.batch_in_epoch)
            if self.resumed_rng is not None and self.batch_in_epoch == 0:
                set_rng_state(self.resumed_rng)
                self.resumed_rng = None
            iterator = iter(self._loader(batches))
            if self.resumed_rng is not None:  # mid-epoch: the loader's own seed draw happened before the save
                set_rng_state(self.resumed_rng)
                self.resumed_rng = None
            losses = []
            began = time.monotonic()
            while True:
                parts = [part for _, part in zip(range(accumulation), iterator)]
                if len(parts) < accumulation:
                    break
                losses.append(self.accumulated_step(parts))
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
            record = {"epoch": self.epoch, "step": self.step, "loss": float(np.mean(losses)) if losses else None,
                      "train_seconds": round(time.monotonic() - began, 3)}
            if self.validates:
                scores = (self.validation.evaluate(self.model, self.config, self.device, self.amp)
                          if self.validation is not None else None)
                record |= broadcast_object(scores)
            self.epoch += 1
            self.batch_in_epoch = 0
            improved = self.best is None or not self.validates or record[BEST_METRIC] > self.best[BEST_METRIC]
            if improved:
                self.best = record
            self.save()
            if improved:
                self.save("best.pt")
            if self.group.main:
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
    group = from_environment(config.train.device)
    try:
        trainer = Trainer(config, args.data, args.out, args.val, progress=not args.no_progress,
                          checkpoint_every=args.checkpoint_every, group=group)
        best = trainer.run(args.stop_after)
    finally:
        shutdown()
    for issue in trainer.issues.issues:
        print(f"rank {group.rank}: {issue}" if group.enabled else issue, file=sys.stderr)
    if group.main:
        print(f"step {trainer.step}/{trainer.total_steps}; best: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
