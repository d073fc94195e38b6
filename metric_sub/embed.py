"""Batched embedding of crops by one model or an ensemble, resumable, as arrays plus row metadata.

Output of a run in ``--out DIR`` (what the matcher reads):

* ``embeddings.npy``: float32 ``(N, D)``, every row unit-norm. For an
  ensemble, the models' unit vectors are concatenated and re-normalised, so
  columns ``offset_k .. offset_k + dim_k`` re-normalised give model k alone.
* ``embeddings.json``: ``{"format", "dim", "models": [{"name", "config",
  "weights", "dim", "offset"}], "rows": [...], "issues": [...]}``; row i
  describes embeddings[i]: ``kind`` (image/video), ``source_id`` plus
  ``item_id`` or ``video_id``, ``file``, ``path``, ``frame`` (null for
  images), ``box`` [x1, y1, x2, y2], ``score``, ``group`` and
  ``instance_id`` (ground truth, 0 when unknown). Boxes whose pixels could
  not be read have no row; ``issues`` says why.

Work is done in chunks of sources (images and clips); each finished chunk is
saved under ``DIR/chunks/`` keyed by its boxes and the models, so a rerun
after a crash, or with more boxes, only computes what is new. Every clip of a
chunk is decoded once and its crops go through every model of the ensemble.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dataset.errors import Issue, IssueLog
from dataset.jsonio import digest, file_stamp, write_json_atomic
from dataset.layout import load_dataset
from dataset.prefetch import prefetch
from dataset.records import Dataset
from metric_sub.buckets import aspect_group, resize_to_bucket
from metric_sub.config import EmbedderConfig, load_embedder_config
from metric_sub.data import CropRef, ground_truth_crops, iter_crops
from metric_sub.model import Embedder, build_embedder
from runtime.allocator import release_freed_memory
from runtime.checkpoint import load_checkpoint
from runtime.device import pick_device
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


def _chunks(refs: Sequence[CropRef], sources_per_chunk: int) -> list[list[int]]:
    by_source: dict[str, list[int]] = defaultdict(list)
    for index, ref in enumerate(refs):
        by_source[ref.path].append(index)
    sources = list(by_source.values())
    return [[i for s in sources[k:k + sources_per_chunk] for i in s]
            for k in range(0, len(sources), sources_per_chunk)]


def vector_settings(config: EmbedderConfig) -> dict:
    """The config values a model's vectors depend on: the network and the crop sizes, not how it trains or
    batches."""
    return config.model_dump(mode="json", exclude={"embed", "train"})


def model_key(config: EmbedderConfig, weights: Path | str | None, device: torch.device) -> dict:
    """What a model's vectors depend on: the model, its weights and the precision it runs in on ``device``
    (bf16 moves them by about 1e-3), not the batch size or compilation."""
    return {"config": vector_settings(config), "weights": file_stamp(weights or None),
            "dtype": effective_dtype(device, config.embed.dtype)}


def _plan(runners: Sequence[ModelRunner], refs: Sequence[CropRef],
          sources_per_chunk: int) -> tuple[list[list[int]], list[str]]:
    """The chunks of ref indices and the key each chunk's files are saved under."""
    models_key = [model_key(r.config, r.weights, r.device) for r in runners]
    plan = _chunks(refs, sources_per_chunk)
    return plan, [digest([models_key, [refs[i].to_json() for i in chunk]]) for chunk in plan]


def finished_sources(runners: Sequence[ModelRunner], refs: Sequence[CropRef], out_dir: Path | str,
                     sources_per_chunk: int = 64) -> int:
    """How many images and clips of ``refs`` an earlier run into ``out_dir`` has already embedded."""
    chunk_dir = Path(out_dir) / "chunks"
    plan, keys = _plan(runners, refs, sources_per_chunk)
    return sum(len({refs[i].path for i in chunk}) for chunk, key in zip(plan, keys)
               if (chunk_dir / f"{key}.npy").is_file())


def run_embedding(runners: Sequence[ModelRunner], refs: Sequence[CropRef], out_dir: Path | str,
                  sources_per_chunk: int = 64, workers: int = 2, progress: bool = True) -> IssueLog:
    """Embed every ref with the ensemble into ``out_dir`` (see the module docstring), resuming chunks.

    Free memory the allocator kept is handed back after each chunk
    (``release_freed_memory``): crops of other sizes would otherwise pile up
    as holes in the heap.
    """
    out_dir = Path(out_dir)
    chunk_dir = out_dir / "chunks"
    chunk_dir.mkdir(parents=True, exist_ok=True)
    issues = IssueLog()
    plan, keys = _plan(runners, refs, sources_per_chunk)

    def prepare(chunk: list[int]) -> tuple[IssueLog, list[int], list[np.ndarray]]:
        chunk_issues = IssueLog()
        kept, crops = read_crops([refs[i] for i in chunk], chunk_issues, workers)
        return chunk_issues, kept, crops

    todo = [(c, k) for c, k in zip(plan, keys) if not (chunk_dir / f"{k}.npy").is_file()]
    if len(todo) < len(plan):
        log.info("resuming: %d of %d chunks found done in %s; skipped", len(plan) - len(todo), len(plan), chunk_dir)
    else:
        log.info("%d chunks", len(plan))
    # Decoding and cropping the next chunk in a thread overlaps the models' work on this one.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="crops") as pool:
        upcoming = pool.submit(prepare, todo[0][0]) if todo else None
        for position, (chunk, key) in enumerate(tqdm(todo, desc="embed", unit="chunk", disable=not progress)):
            chunk_issues, kept, crops = upcoming.result()
            if position + 1 < len(todo):
                upcoming = pool.submit(prepare, todo[position + 1][0])
            embeddings = embed_crops(runners, crops, [refs[chunk[i]].group for i in kept])
            np.save(chunk_dir / f"{key}.tmp.npy", embeddings)
            write_json_atomic(chunk_dir / f"{key}.json",
                              {"kept": kept, "issues": [vars(i) for i in chunk_issues.issues]})
            (chunk_dir / f"{key}.tmp.npy").replace(chunk_dir / f"{key}.npy")
            del crops, embeddings
            release_freed_memory()

    blocks, rows = [], []
    for chunk, key in zip(plan, keys):
        blocks.append(np.load(chunk_dir / f"{key}.npy"))
        record = json.loads((chunk_dir / f"{key}.json").read_text())
        issues.issues.extend(Issue(**entry) for entry in record["issues"])
        rows.extend(_row(refs[chunk[i]]) for i in record["kept"])
    dim = sum(r.dim for r in runners)
    embeddings = np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)
    np.save(out_dir / "embeddings.tmp.npy", embeddings.astype(np.float32))
    (out_dir / "embeddings.tmp.npy").replace(out_dir / "embeddings.npy")
    offsets = np.cumsum([0] + [r.dim for r in runners]).tolist()
    write_json_atomic(out_dir / "embeddings.json", {
        "format": FORMAT, "dim": dim,
        "models": [{"name": r.config.name, "config": r.config.model_dump(mode="json"), "weights": r.weights,
                    "dim": r.dim, "offset": offsets[k]} for k, r in enumerate(runners)],
        "rows": rows, "issues": [vars(i) for i in issues.issues]})
    return issues


def _row(ref: CropRef) -> dict:
    row = ref.to_json()
    row["item_id" if ref.kind == "image" else "video_id"] = ref.source_id
    return row


def load_embeddings(out_dir: Path | str) -> tuple[np.ndarray, dict]:
    """The ``(embeddings, metadata)`` a run wrote; row i of the metadata describes embeddings[i]."""
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / "embeddings.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{out_dir}: not a {FORMAT} output")
    return np.load(out_dir / "embeddings.npy"), meta


def boxes_to_refs(boxes_path: Path | str, data: Dataset, issues: IssueLog) -> list[CropRef]:
    """The detector's boxes JSON as crop refs, files resolved through the dataset.

    Accepts the detector's document (``bbox_sub.schema``: ``images`` and
    ``videos`` lists), ``{"boxes": [...]}`` or a plain list of boxes. A box
    whose image or clip is not in the dataset is recorded and skipped.
    """
    return boxes_document_to_refs(json.loads(Path(boxes_path).read_text()), data, issues, str(boxes_path))


def boxes_document_to_refs(raw: dict | list, data: Dataset, issues: IssueLog, source: str = "boxes") -> list[CropRef]:
    """``boxes_to_refs`` for a document already in memory."""
    if isinstance(raw, dict):
        boxes = raw["boxes"] if "boxes" in raw else raw.get("images", []) + raw.get("videos", [])
    else:
        boxes = raw
    refs: list[CropRef] = []
    for box in boxes:
        kind = box.get("type", "video" if box.get("video_id") is not None else "image")
        bbox = tuple(int(v) for v in box["bbox"])
        path = _resolve_source(box, kind, data)
        if path is None:
            issues.warning(source, f"box source {box.get('file')!r} ({kind}) not in the dataset; skipped")
            continue
        group = box.get("aspect_group")
        refs.append(CropRef(kind, str(box.get("item_id") if kind == "image" else box.get("video_id")), str(path),
                            int(box["frame"]) if kind == "video" else None, bbox,
                            int(group) if group is not None else aspect_group(bbox),
                            int(box.get("instance_id", 0) or 0), float(box.get("score", 1.0))))
    return refs


def _resolve_source(box: dict, kind: str, data: Dataset) -> Path | None:
    name = Path(str(box.get("file", ""))).name
    if kind == "image":
        item = data.items.get(str(box.get("item_id")))
        for image in item.images if item else ():
            if image.img_name == name or image.stem == Path(name).stem:
                return image.path
    else:
        video = data.videos.get(str(box.get("video_id")))
        if video is not None:
            return video.path
    direct = Path(str(box.get("file", "")))
    return direct if direct.is_absolute() and direct.is_file() else None


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m metric_sub.embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", required=True, help="embedder configs (paths or bundled names)")
    parser.add_argument("--weights", nargs="*", default=None,
                        help="one checkpoint per config, in order; '-' keeps a Lite config's ImageNet weights")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--boxes", type=Path, help="the detector's boxes JSON")
    source.add_argument("--ground-truth", action="store_true", help="embed the annotated boxes (evaluation)")
    parser.add_argument("--data", nargs="+", required=True, type=Path, help="dataset root(s)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--min-frame", type=int, default=0, help="ground truth: first clip frame used")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda[:k] (default: the configs' choice)")
    parser.add_argument("--workers", type=int, default=2, help="clip-decoding threads")
    parser.add_argument("--chunk", type=int, default=64, help="images and clips per resumable chunk")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value in every config, e.g. embed.batch_size=256")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    weights = args.weights or [None] * len(args.configs)
    if len(weights) != len(args.configs):
        raise SystemExit(f"{len(args.configs)} configs but {len(weights)} weights")
    configs = [load_embedder_config(c, args.overrides) for c in args.configs]
    device = pick_device(args.device or configs[0].embed.device)
    runners = [load_runner(c, None if w in (None, "-") else w, device) for c, w in zip(configs, weights)]
    issues = IssueLog()
    data = load_dataset(args.data, issues)
    if args.ground_truth:
        refs = ground_truth_crops(data, args.min_frame, include_unlabelled=True)
    else:
        refs = boxes_to_refs(args.boxes, data, issues)
    run_issues = run_embedding(runners, refs, args.out, args.chunk, args.workers)
    issues.extend(run_issues)
    embeddings, _ = load_embeddings(args.out)
    print(f"{len(embeddings)} of {len(refs)} boxes embedded ({embeddings.shape[1]}-d) into {args.out}; "
          f"{len(issues.errors)} errors, {len(issues.warnings)} warnings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
