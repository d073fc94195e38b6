"""The encode stage on one machine: every source not yet stored goes through the per-source path, then the
stored sources are gathered into the files the matcher and the user read.

Sources are decoded ahead in threads (``decode_workers``) while the models work; a group of
``group_size`` prepared sources is embedded together, so crops of many sources share a batch, and each
source is written to the store as soon as its group is done.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from bbox_sub.config import DetectorConfig
from bbox_sub.detect import BatchDetector
from bbox_sub.infer import fingerprint
from bbox_sub.model import load_detector
from dataset.boxes_file import FORMAT as BOXES_FORMAT, VERSION as BOXES_VERSION, validate_boxes
from dataset.errors import DataError, Issue
from dataset.jsonio import write_json_atomic
from dataset.prefetch import prefetch
from metric_sub.config import EmbedderConfig
from metric_sub.embed import load_runner, model_key, write_embeddings
from pipeline.source import EncodedSource, PreparedSource, Source, SourceEncoder, read_source, source_rows
from pipeline.store import SourceStore
from runtime.allocator import release_freed_memory

log = logging.getLogger(__name__)

SOURCES_PER_GROUP = 16
"""Sources embedded together by default: enough crops per bucket for full batches, few enough to hold their
crops in memory; each group is written when done, so it is also the resume step."""

DetectorSpec = tuple[DetectorConfig, Path]
EmbedderSpec = tuple[EmbedderConfig, Path | None]


def models_key(detector: DetectorSpec | None, embedders: Sequence[EmbedderSpec], device: torch.device) -> dict:
    """What every stored vector depends on besides its source: the detector's model, inference settings and
    weights, and each embedder's network, weights and precision on ``device``."""
    return {"detector": None if detector is None else fingerprint(*detector),
            "embedders": [model_key(config, weights, device) for config, weights in embedders]}


def load_encoder(*, detector: DetectorSpec | None, embedders: Sequence[EmbedderSpec],
                 device: torch.device) -> SourceEncoder:
    """The models on ``device``, prepared for inference."""
    runners = [load_runner(config, weights, device) for config, weights in embedders]
    if detector is None:
        return SourceEncoder(runners=runners)
    config, weights = detector
    settings = config.infer
    batch = BatchDetector(load_detector(config.model, weights, device), device, precision=settings.precision,
                          channels_last=settings.channels_last, compile_backbone=settings.compile)
    return SourceEncoder(runners=runners, detector=batch, infer=settings)


@dataclass
class EncodeReport:
    """What encoding cost: the sources that could not be read, and the seconds spent per step (``read``: waiting
    for decoded sources; ``detect``: boxes and crops; ``embed``; ``write``)."""

    failures: list[Issue] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("read", "detect", "embed", "write"), 0.0))


def encode_sources(encoder: SourceEncoder, todo: Sequence[tuple[Source, str]], store: SourceStore, *,
                   workers: int = 2, group_size: int = SOURCES_PER_GROUP, video_backend: str = "auto",
                   progress: bool = True) -> EncodeReport:
    """Encode and store every ``(source, key)``; clips are decoded by ``video_backend``."""
    report = EncodeReport()
    seconds = report.seconds
    group: list[tuple[PreparedSource, str]] = []

    def flush() -> None:
        started = time.perf_counter()
        encoded = encoder.embed([p for p, _ in group])
        seconds["embed"] += time.perf_counter() - started
        started = time.perf_counter()
        for item, (_, key) in zip(encoded, group):
            store.save(key, item)
        group.clear()
        release_freed_memory()  # crops of other sizes would otherwise pile up as holes in the heap
        seconds["write"] += time.perf_counter() - started

    reads = prefetch(lambda job: read_source(job[0], backend=video_backend), todo, workers, ahead=2 * max(workers, 1))
    with tqdm(total=len(todo), desc="encode", unit="source", dynamic_ncols=True, disable=not progress) as bar:
        waited = time.perf_counter()
        for (source, key), read in reads:
            seconds["read"] += time.perf_counter() - waited
            if isinstance(read, DataError):
                report.failures.append(Issue(str(read.path), read.problem, "error"))
                log.error("skipped %s: %s", read.path, read.problem)
            elif isinstance(read, Exception):
                raise read
            else:
                started = time.perf_counter()
                group.append((encoder.prepare(read), key))
                seconds["detect"] += time.perf_counter() - started
                if len(group) >= group_size:
                    flush()
            bar.update(1)
            waited = time.perf_counter()
        if group:
            flush()
    return report


@dataclass
class Gathered:
    """Every source of a run read back from the store, in the run's order."""

    encoded: list[EncodedSource] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    failures: list[Issue] = field(default_factory=list)

    def resumed(self, computed: set[str]) -> dict[str, int]:
        """Shop images and clips that an earlier run had stored (those whose key is not in ``computed``)."""
        earlier = [e for e, k in zip(self.encoded, self.keys) if k not in computed]
        return {"images": sum(e.pictures for e in earlier if e.source.kind == "item"),
                "videos": sum(e.source.kind == "clip" for e in earlier)}

    @property
    def issues(self) -> list[Issue]:
        return [issue for e in self.encoded for issue in e.issues] + self.failures

    @property
    def missing_frames(self) -> list[dict[str, Any]]:
        return [{"video_id": e.source.source_id, "file": e.source.files[0], **e.missing}
                for e in self.encoded if e.missing]

    def vectors(self, dim: int) -> np.ndarray:
        blocks = [e.vectors for e in self.encoded]
        return np.concatenate(blocks).astype(np.float32) if blocks else np.zeros((0, dim), np.float32)


def gather(sources: Sequence[Source], keys: Sequence[str], store: SourceStore, failures: Sequence[Issue]) -> Gathered:
    """The stored sources (those not stored failed to read: ``failures`` says why)."""
    gathered = Gathered(failures=list(failures))
    for source, key in zip(sources, keys):
        if store.has(key):
            gathered.encoded.append(store.load(key, source))
            gathered.keys.append(key)
    return gathered


def boxes_document(gathered: Gathered, detector: DetectorSpec, resumed: dict[str, int]) -> dict[str, Any]:
    """The detector's boxes of a run in the boxes-file schema (``dataset.boxes_file``)."""
    config, weights = detector
    items = [e for e in gathered.encoded if e.source.kind == "item"]
    clips = [e for e in gathered.encoded if e.source.kind == "clip"]
    return {
        "format": BOXES_FORMAT, "version": BOXES_VERSION, "config": config.name, "weights": str(weights),
        "settings": config.infer.model_dump(mode="json"),
        "processed": {"images": sum(e.pictures for e in items), "videos": len(clips)},
        "skipped": [{"path": i.path, "problem": i.problem} for i in gathered.issues if i.severity == "error"],
        "resumed": resumed,
        "missing_frames": gathered.missing_frames,
        "images": [r for e in items for r in e.records],
        "videos": [r for e in clips for r in e.records],
    }


def write_outputs(out: Path, gathered: Gathered, *, detector: DetectorSpec | None,
                  embedders: Sequence[EmbedderSpec], resumed: dict[str, int]) -> None:
    """``boxes.json`` (with a detector) and ``embed/embeddings.{npy,json}`` from the gathered sources."""
    if detector is not None:
        document = boxes_document(gathered, detector, resumed)
        validate_boxes(document, str(out / "boxes.json"))
        write_json_atomic(out / "boxes.json", document)
    dim = sum(config.model.embedding_size for config, _ in embedders)
    sources = [{"kind": e.source.kind, "source_id": e.source.source_id, "files": list(e.source.files),
                "pictures": e.pictures} for e in gathered.encoded]
    write_embeddings(out / "embed", gathered.vectors(dim), source_rows(gathered.encoded), embedders,
                     gathered.issues, gathered.missing_frames, sources)
