"""Batched embedding of crops by one model or an ensemble, and the embeddings files the matcher reads.

``embed_crops`` runs crops through every model of an ensemble; the models' unit vectors are concatenated and
re-normalised (the seed's ensemble), so columns ``offset_k .. offset_k + dim_k`` re-normalised give model k
alone. A run's output folder (``pipeline``) holds:

* ``embeddings.npy``: float32 ``(N, D)``, every row unit-norm.
* ``embeddings.json``: ``{"format", "dim", "models": [{"name", "config", "weights", "dim", "offset"}],
  "rows": [...], "issues": [...], "missing_frames": [...], "sources": [...]}``; row i describes embeddings[i]: ``kind``
  (image/video), ``source_id`` plus ``item_id`` or ``video_id``, ``file``, ``path``, ``frame`` (null for
  images), ``box`` [x1, y1, x2, y2], ``score``, ``group`` and ``instance_id`` (ground truth, 0 when unknown).
  Boxes whose pixels could not be read have no row; ``issues`` says why.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dataset.errors import Issue, IssueLog
from dataset.jsonio import file_stamp, write_json_atomic
from dataset.prefetch import prefetch
from metric_sub.buckets import resize_to_bucket
from metric_sub.config import EmbedderConfig
from metric_sub.data import CropRef, iter_crops
from metric_sub.model import Embedder, build_embedder
from runtime.allocator import release_freed_memory
from runtime.checkpoint import load_checkpoint
from runtime.fuse import example_images, fold_batch_norms, fuse_conv_activations
from runtime.precision import autocast, channels_last_pays, effective_dtype

log = logging.getLogger(__name__)

FORMAT = "metric_sub.embeddings/1"


@dataclass
class ModelRunner:
    """One model on its device with its inference settings: crops in, unit vectors out."""

    config: EmbedderConfig
    model: Embedder
    device: torch.device
    weights: str | None = None
    fuse: bool = True
    """Fold the backbone's batch norms into its convolutions and, on a CPU, its activations too, in place
    (``runtime.fuse``); off while training."""

    def __post_init__(self) -> None:
        self.model.eval().to(self.device)
        if self.fuse:
            fold_batch_norms(self.model.backbone, example_images(self.device))
        settings = self.config.embed
        cuda = self.device.type == "cuda"
        self.dtype = effective_dtype(self.device, settings.dtype)
        self.channels_last = settings.channels_last and channels_last_pays(self.device, self.dtype)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.fuse and self.device.type == "cpu":
            fuse_conv_activations(self.model.backbone, example_images(self.device))
        self.graphs = settings.cuda_graphs and cuda
        self.pad = settings.pad_batches and (settings.compile or self.graphs)
        self.forward = self.model
        if settings.compile or self.graphs:
            self.forward = compile_model(self.model, self.graphs)
        self.sizes = self.config.bucket_sizes()

    @property
    def dim(self) -> int:
        return self.config.model.embedding_size

    @property
    def batch_size(self) -> int:
        """Crops per pass on this device (``EmbedConfig.cpu_batch_size`` caps it on a CPU)."""
        settings = self.config.embed
        return settings.batch_size if self.device.type != "cpu" else min(settings.batch_size,
                                                                         settings.cpu_batch_size)

    @torch.inference_mode()
    def forward_batch(self, host: torch.Tensor, count: int) -> torch.Tensor:
        """Unit-norm fp32 embeddings ``(count, dim)``, left on the device, of a uint8 ``(B, H, W, 3)`` batch.

        Nothing here waits for the GPU: the copy from pinned memory and the
        forward pass are queued, so the caller can prepare the next batch meanwhile.
        """
        images = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(self.device, self.dtype):
            features = self.forward(images)
        return F.normalize(features[:count].float(), dim=1)

    def embed_crops(self, crops: Sequence[np.ndarray], groups: Sequence[int]) -> np.ndarray:
        """Embeddings of crops in input order, computed in one-bucket batches."""
        return embed_crops([self], crops, groups)


def _batches(groups: Sequence[int], batch_size: int) -> list[tuple[int, list[int]]]:
    """(bucket, crop indices) per batch: every batch holds one bucket."""
    by_group: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        by_group[group].append(index)
    return [(group, indices[start:start + batch_size])
            for group, indices in sorted(by_group.items()) for start in range(0, len(indices), batch_size)]


def _stack(crops: Sequence[np.ndarray], indices: Sequence[int], size: tuple[int, int], rows: int,
           pinned: bool) -> torch.Tensor:
    """The crops resized to their bucket, written straight into one (page-locked, for CUDA) uint8 batch.

    Rows past ``len(indices)`` stay zero: padding for models compiled for one batch size.
    """
    width, height = size
    batch = torch.empty((rows, height, width, 3), dtype=torch.uint8, pin_memory=pinned)
    view = batch.numpy()
    for row, index in enumerate(indices):
        view[row] = resize_to_bucket(crops[index], size)
    view[len(indices):] = 0
    return batch


def _embed_family(runners: Sequence[ModelRunner], crops: Sequence[np.ndarray],
                  groups: Sequence[int]) -> list[torch.Tensor]:
    """Each runner's embeddings (on its device) of all crops; the runners share bucket sizes and batch size.

    Every batch is resized and stacked once for all runners, in a thread
    while the GPU runs the previous one. On a CPU, the free memory kept from
    one bucket's passes is handed back before the next bucket's.
    """
    lead = runners[0]
    rows = lead.batch_size
    pinned = lead.device.type == "cuda"
    outs = [torch.empty((len(crops), r.dim), device=r.device) for r in runners]

    def prepare(item: tuple[int, list[int]]) -> torch.Tensor:
        group, chunk = item
        return _stack(crops, chunk, lead.sizes[group], rows if lead.pad else len(chunk), pinned)

    previous = None
    for (group, chunk), host in prefetch(prepare, _batches(groups, rows), workers=2, ahead=3):
        if isinstance(host, Exception):
            raise host
        if previous is not None and group != previous and lead.device.type == "cpu":
            release_freed_memory()  # the next bucket's maps have other sizes: kept blocks would not fit them
        previous = group
        where = torch.as_tensor(chunk, device=lead.device)
        for runner, out in zip(runners, outs):
            out[where] = runner.forward_batch(host, len(chunk))
    return outs


def compile_model(model: Embedder, cuda_graphs: bool) -> torch.nn.Module:
    """``torch.compile`` with automatic dynamic shapes: the first bucket compiles static, the second
    recompiles once with symbolic height and width, and that graph serves the other ten.

    The batch dimension stays fixed where batches are padded. In
    ``reduce-overhead`` mode each bucket shape still records its own CUDA graph.
    """
    import torch._dynamo

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 64))
    return torch.compile(model, mode="reduce-overhead" if cuda_graphs else None, dynamic=None)


def load_runner(config: EmbedderConfig, weights: Path | str | None, device: torch.device) -> ModelRunner:
    """A model from a training checkpoint (``model`` key) or, without one, with its initial weights.

    Initial weights are meaningful only for ImageNet-initialised configs
    (zero-shot retrieval); a random-init model without a checkpoint is refused.
    """
    model = build_embedder(config, trained=weights is not None)
    if weights is not None:
        load_trained_weights(model, config, weights)
    elif config.model.init == "random":
        raise ValueError(f"config {config.name!r} starts from random weights: give its trained checkpoint")
    return ModelRunner(config, model, device, str(weights) if weights else None)


def load_trained_weights(model: Embedder, config: EmbedderConfig, weights: Path | str) -> None:
    """Load a checkpoint whose network must be the config's; when it is not, say which model settings it
    was trained with differ (training stores its config), rather than only which tensors do not fit."""
    state = load_checkpoint(weights, weights_only=False)
    try:
        model.load_state_dict(state.get("model", state))
    except RuntimeError as error:
        saved = (state.get("config") or {}).get("model", {})
        own = config.model.model_dump(mode="json")
        differ = ", ".join(f"model.{k}={v!r} (config: {own[k]!r})" for k, v in saved.items()
                           if k in own and own[k] != v)
        # torch's message opens with a header line; the first mismatch follows it
        lines = str(error).splitlines()
        why = f"it was trained with {differ}" if differ else lines[min(1, len(lines) - 1)].strip()
        raise ValueError(f"{weights}: not a checkpoint of config {config.name!r}'s network: {why}") from None


def fuse(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate the models' unit vectors and re-normalise (the seed's ensemble)."""
    fused = np.concatenate(blocks, axis=1)
    return fused / np.maximum(np.linalg.norm(fused, axis=1, keepdims=True), 1e-12)


def read_crops(refs: Sequence[CropRef], issues: IssueLog, workers: int = 2) -> tuple[list[int], list[np.ndarray]]:
    """The readable refs' indices and crops (each source decoded once)."""
    kept: list[int] = []
    crops: list[np.ndarray] = []
    for index, patch in iter_crops(refs, issues, workers):
        kept.append(index)
        crops.append(patch)
    return kept, crops


def embed_crops(runners: Sequence[ModelRunner], crops: Sequence[np.ndarray], groups: Sequence[int]) -> np.ndarray:
    """Fused ensemble embeddings of crops with their aspect groups.

    Runners that share bucket sizes and batch settings (the usual ensemble)
    get the same prepared batches, each uploaded once.
    """
    if not crops:
        return np.zeros((0, sum(r.dim for r in runners)), np.float32)
    families: dict[tuple, list[int]] = defaultdict(list)
    for position, runner in enumerate(runners):
        key = (tuple(runner.sizes), runner.batch_size, runner.pad, runner.device)
        families[key].append(position)
    blocks: list[np.ndarray | None] = [None] * len(runners)
    for positions in families.values():
        outs = _embed_family([runners[p] for p in positions], crops, groups)
        for position, out in zip(positions, outs):
            blocks[position] = out.cpu().numpy()
    return fuse(blocks)


def embed_refs(runners: Sequence[ModelRunner], refs: Sequence[CropRef], issues: IssueLog,
               workers: int = 2) -> tuple[np.ndarray, list[int]]:
    """Fused embeddings of the readable refs, and their indices into ``refs``."""
    kept, crops = read_crops(refs, issues, workers)
    return embed_crops(runners, crops, [refs[i].group for i in kept]), kept


def vector_settings(config: EmbedderConfig) -> dict:
    """The config values a model's vectors depend on: the network and the crop sizes, not how it trains or
    batches."""
    return config.model_dump(mode="json", exclude={"embed", "train"})


def model_key(config: EmbedderConfig, weights: Path | str | None, device: torch.device) -> dict:
    """What a model's vectors depend on: the model, its weights and the precision it runs in on ``device``
    (bf16 moves them by about 1e-3), not the batch size or compilation."""
    return {"config": vector_settings(config), "weights": file_stamp(weights or None),
            "dtype": effective_dtype(device, config.embed.dtype)}


def write_embeddings(out_dir: Path | str, embeddings: np.ndarray, rows: Sequence[dict],
                     models: Sequence[tuple[EmbedderConfig, Path | str | None]], issues: Sequence[Issue],
                     missing_frames: Sequence[dict] = (), sources: Sequence[dict] = ()) -> Path:
    """Write ``embeddings.npy`` and ``embeddings.json`` (see the module docstring) for the ensemble ``models``
    (config, weights), the array first, each renamed into place when complete. ``sources`` lists the items and
    clips the rows came from (kind, id, pictures read), those without boxes included."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dims = [config.model.embedding_size for config, _ in models]
    array = np.asarray(embeddings, np.float32).reshape(-1, sum(dims))
    np.save(out_dir / "embeddings.tmp.npy", array)
    (out_dir / "embeddings.tmp.npy").replace(out_dir / "embeddings.npy")
    offsets = np.cumsum([0] + dims).tolist()
    write_json_atomic(out_dir / "embeddings.json", {
        "format": FORMAT, "dim": sum(dims),
        "models": [{"name": config.name, "config": config.model_dump(mode="json"),
                    "weights": str(weights) if weights else None, "dim": dims[k], "offset": offsets[k]}
                   for k, (config, weights) in enumerate(models)],
        "rows": list(rows), "issues": [vars(i) for i in issues], "missing_frames": list(missing_frames),
        "sources": list(sources)})
    return out_dir


def load_embeddings(out_dir: Path | str) -> tuple[np.ndarray, dict]:
    """The ``(embeddings, metadata)`` a run wrote; row i of the metadata describes embeddings[i]."""
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / "embeddings.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{out_dir}: not a {FORMAT} output")
    return np.load(out_dir / "embeddings.npy"), meta
