"""Training on several processes: torchrun's environment, the process group, and the few collective steps both
trainers share (splitting a global batch, agreeing on a flag, gathering rows, synchronised batch norm).

Both trainers read the config's batch size and learning rate as those of the global batch (all ranks and all
accumulation steps together) and split each global batch into equal contiguous parts, one per rank. So the same
config trains the same recipe on one process or on N: the same samples per step, the same number of steps, and,
with synchronised batch norm, the same gradients up to floating-point rounding.

``python -m ...`` runs one process as before; ``torchrun --nproc_per_node=N -m ...`` sets ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, and ``from_environment`` joins that group: NCCL
with one GPU per process, gloo on CPUs.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from runtime.device import pick_device

T = TypeVar("T")

TIMEOUT_ENV = "SHOPMATCH_DIST_TIMEOUT_S"
"""Seconds a rank waits for the others at a collective before failing (default 1800): rank 0 validates and
checkpoints while the others wait at a barrier, so this must cover a validation pass."""


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the group: its rank, how many ranks, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and progress bars."""
        return self.rank == 0


def from_environment(device: str = "auto") -> Distributed:
    """This process's place in a torchrun group (joining it), or a single process on ``device``.

    Under torchrun each process takes the GPU of its ``LOCAL_RANK`` when CUDA is used (NCCL); on a CPU the group
    talks gloo. A group already joined (a test that spawned its own ranks) is reused.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and not (dist.is_available() and dist.is_initialized()):
        return Distributed(device=pick_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = pick_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
        kwargs: dict[str, Any] = {"device_id": chosen} if chosen.type == "cuda" else {}
        dist.init_process_group(backend, timeout=timeout, **kwargs)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, chosen)


def shutdown() -> None:
    """Leave the process group (a no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def micro_batch_size(global_batch: int, world_size: int, accumulation: int, what: str) -> int:
    """Samples per rank per forward pass: the global batch over ranks and accumulation steps, which must divide
    it, since unequal parts would weigh the ranks' samples differently."""
    parts = world_size * accumulation
    if global_batch % parts:
        raise ValueError(f"{what}: the global batch of {global_batch} does not split into {world_size} ranks x "
                         f"{accumulation} accumulation steps; choose a batch size divisible by {parts}")
    return global_batch // parts


def rank_part(batch: Sequence[T], rank: int, world_size: int) -> list[T]:
    """This rank's contiguous part of a global batch (``len(batch)`` divisible by ``world_size``)."""
    share = len(batch) // world_size
    return list(batch[rank * share:(rank + 1) * share])


def chunks(items: Sequence[T], count: int) -> list[list[T]]:
    """``items`` in ``count`` equal contiguous chunks (the micro-batches of one accumulated step)."""
    size = len(items) // count
    return [list(items[i * size:(i + 1) * size]) for i in range(count)]


def barrier() -> None:
    if _active():
        dist.barrier()


def all_agree(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on every rank (one all-reduce), so that all ranks take the same branch."""
    if not _active():
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``values`` over ranks (for logging the global batch's losses)."""
    if not _active():
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's ``rows`` (equal shapes on all ranks) concatenated in rank order, without gradient."""
    if not _active():
        return rows.detach()
    parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, rows.detach().contiguous())
    return torch.cat(parts)


def gather_objects(value: T) -> list[T]:
    """Every rank's picklable ``value``, in rank order (a one-element list for a single process)."""
    if not _active():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast_object(value: T) -> T:
    """Rank 0's picklable ``value`` on every rank (what the other ranks pass is ignored)."""
    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_first(group: Distributed) -> Iterator[None]:
    """Rank 0 runs the block first and the others after it, e.g. so that only rank 0 decodes into a shared
    cache and the others find it filled."""
    if not group.main:
        barrier()
    try:
        yield
    finally:
        if group.main:
            barrier()


def wrap(module: nn.Module, group: Distributed) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` when there are several ranks, else itself.

    Buffers are not broadcast from rank 0 at each forward (as detectron2): with synchronised batch norm every
    rank holds the same statistics anyway, and without it each rank's own are what its batch norm should use.
    """
    if not group.enabled:
        return module
    device_ids = [group.device.index] if group.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)


def no_sync(module: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` when ``skip`` (a micro-step of gradient accumulation before the last), else nothing."""
    if skip and isinstance(module, nn.parallel.DistributedDataParallel):
        return module.no_sync()
    return contextlib.nullcontext()


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with its gradient: the sum's gradient reaches every rank's summand, summed over ranks."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def differentiable_all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(tensor)


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch on any device and backend.

    torch's ``SyncBatchNorm`` only runs on GPUs; this one all-reduces per-channel sums with a differentiable
    all-reduce, so CPU ranks on gloo normalise exactly as one process would on the
    whole batch. It keeps the keys of the norm it replaces, and timm's activation and drop after it (as
    ``BatchNormAct2d`` has them), so checkpoints move freely between synchronised and plain runs.
    """

    def __init__(self, source: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__(source.num_features, source.eps, source.momentum, source.affine,
                         source.track_running_stats)
        if source.affine:
            self.weight, self.bias = source.weight, source.bias
        if source.track_running_stats:
            self.running_mean, self.running_var = source.running_mean, source.running_var
            self.num_batches_tracked = source.num_batches_tracked
        self.drop = getattr(source, "drop", None) or nn.Identity()
        self.act = getattr(source, "act", None) or nn.Identity()
        self.train(source.training)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and _active():
            y = self._synced(x)
        else:
            y = super().forward(x)
        return self.act(self.drop(y))

    def _synced(self, x: torch.Tensor) -> torch.Tensor:
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        totals = differentiable_all_reduce(torch.cat([x.sum(dims), count]))
        n = totals[-1].detach()
        mean = totals[:-1] / n
        centered = x - mean.view(shape)
        var = differentiable_all_reduce(centered.pow(2).sum(dims)) / n
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * (n / max(float(n) - 1, 1.0))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        return y


def sync_batch_norms(module: nn.Module, device: torch.device) -> nn.Module:
    """Every batch norm of ``module`` synchronised over the ranks: torch's (via timm, which keeps its
    activations) on CUDA, ``GlooSyncBatchNorm`` elsewhere. Frozen norms stay frozen; returns the module."""
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
        return GlooSyncBatchNorm(module)
    for name, child in module.named_children():
        replaced = sync_batch_norms(child, device)
        if replaced is not child:
            setattr(module, name, replaced)
    return module
