"""Synchronised batch norm on CPU ranks (gloo): 2 ranks x half a batch normalise, back-propagate and track
statistics as one process does on the whole batch."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from timm.layers import BatchNormAct2d
from torch import nn

from runtime.distributed import GlooSyncBatchNorm, sync_batch_norms
from support import free_loopback_port

ATOL = 1e-5


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), BatchNormAct2d(8), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 6), nn.BatchNorm1d(6))


def _pass(network: nn.Module, images: torch.Tensor, weights: torch.Tensor, total: int) -> torch.Tensor:
    images = images.clone().requires_grad_()
    (network(images) * weights).sum().div(total).backward()
    return images.grad


def _rank(rank: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        generator = torch.Generator().manual_seed(1)
        images, weights = torch.randn(6, 3, 8, 8, generator=generator), torch.randn(6, 6, generator=generator)
        network = sync_batch_norms(_network(), torch.device("cpu")).train()
        assert sum(isinstance(m, GlooSyncBatchNorm) for m in network.modules()) == 3
        part = slice(3 * rank, 3 * rank + 3)
        grad = _pass(network, images[part], weights[part], 6)
        grads = [p.grad.clone() for p in network.parameters()]
        for g in grads:
            dist.all_reduce(g)
        parts = [torch.empty_like(grad) for _ in range(2)]
        dist.all_gather(parts, grad)
        if rank == 0:
            reference = _network().train()
            expected = _pass(reference, images, weights, 6)
            results["input"] = float((torch.cat(parts) - expected).abs().max())
            results["params"] = max(float((g - p.grad).abs().max()) for g, p in zip(grads, reference.parameters()))
            results["stats"] = max(float((a - b).abs().max()) for a, b in
                                   zip(network.state_dict().values(), reference.state_dict().values()))
            results["keys"] = list(network.state_dict()) == list(reference.state_dict())
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_gloo_sync_batch_norm_matches_one_process_on_the_whole_batch() -> None:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(free_loopback_port(), results), nprocs=2, join=True)
        results = dict(results)
    assert results["keys"]
    assert results["input"] < ATOL and results["params"] < ATOL and results["stats"] < ATOL, results
