"""Detection, embedding and matching per request, through the batch run's per-source path.

The models are loaded once, as the batch run loads them (``pipeline.encode.load_encoder``). A shop-image folder or
a clip goes through the same steps as in ``run.sh`` (``pipeline.source``): its pictures read once
(``read_source``), boxes by the detector with the detector config's inference settings (``detected_boxes``), crops
from the same pictures (``cut_crops``), vectors by the fused ensemble (``embed_crops``), the decision by
``service.matcher`` with the matcher config ``run.sh`` uses. Model calls go through micro-batchers
(``service.batcher``), so they run off the event loop and share batches across requests. What this layer will
not process it refuses with ``Refused`` (a code and a message); the routes choose the HTTP answer.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bbox_sub.config import load_detector_config
from dataset.errors import DataError, IssueLog
from dataset.frames import probe
from dataset.images import ImageTooLarge, image_size
from dataset.jsonio import file_digest
from metric_sub.config import load_embedder_config
from metric_sub.embed import embed_crops, vector_settings
from metric_sub.match import load_match_config
from metric_sub.vote import VoteRules
from pipeline.encode import load_encoder
from pipeline.model_set import ModelSet
from pipeline.source import EncodedSource, Source, SourcePictures, cut_crops, detected_boxes, read_source
from runtime.device import pick_device
from service.batcher import Admission, MicroBatcher, PixelBudget
from service.errors import Refused
from service.gallery import Snapshot, SourceBoxes
from service.matcher import GalleryMatcher
from service.metrics import Metrics
from service.settings import Settings


def _problem(exc: DataError, path: Path) -> str:
    """A reader's problem with the file's folder taken out: answers name files, never server paths."""
    return exc.problem.replace(str(path), path.name).replace(f"{path.parent}/", "")


def _refuse_or_skip(exc: DataError, path: Path, strict: bool) -> str:
    """An unreadable shop image: refused when too large (always) or when ``strict``, else the line that says
    it was skipped."""
    message = f"{path.name}: {_problem(exc, path)}"
    if isinstance(exc, ImageTooLarge):
        raise Refused("image_too_large", message) from None
    if strict:
        raise Refused("corrupt_file", message) from None
    return message


def source_boxes(encoded: EncodedSource, origin: str, skipped: Sequence[str] = ()) -> SourceBoxes:
    """An encoded source as the gallery and the matcher keep it (image names without extension, frame -1 for
    shop images)."""
    item = encoded.source.kind == "item"
    return SourceBoxes(encoded.source.kind, encoded.source.source_id, origin,
                       np.asarray(encoded.vectors, np.float32),
                       [Path(r.path).stem if item else "" for r in encoded.refs],
                       [-1 if item else int(r.frame) for r in encoded.refs],
                       [tuple(r.box) for r in encoded.refs], [r.score for r in encoded.refs],
                       [r.group for r in encoded.refs], encoded.pictures, list(skipped))


def model_identity(models: ModelSet) -> dict[str, Any]:
    """What a gallery's vectors depend on: the detector's name, inference settings and weights, each embedder's
    name, network and weights (by content, so a copy of the same files is the same models)."""
    det_cfg = load_detector_config(models.detector.config)
    embed_cfgs = [load_embedder_config(spec.config) for spec in models.embedders]
    return {"detector": [det_cfg.name, file_digest(models.detector.weights)],
            "embedders": [[c.name, vector_settings(c), file_digest(s.weights)]
                          for c, s in zip(embed_cfgs, models.embedders)]}


def load_rules(settings: Settings, models: ModelSet) -> VoteRules:
    """The voting rules of the matcher config ``run.sh`` would use. Its ``index`` section must be the exact
    search: the gallery votes with exact distances so that its answers are the batch run's, and an approximate
    kind would be silently ignored, so it is refused (a Milvus gallery's own search has ``gallery.index``)."""
    config = load_match_config(models.match, settings.match_set)
    if config.index.kind != "flat":
        raise DataError(models.match or "match config", f"match.index.kind={config.index.kind!r}: the service votes "
                        "with exact search over its gallery; use kind 'flat' (gallery.index sets Milvus's search)")
    return config.vote


class Engine:
    """The loaded models, their batchers and the matcher settings."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.device = pick_device(settings.device)
        models = settings.model_set()
        det_cfg = load_detector_config(models.detector.config)
        embed_cfgs = [load_embedder_config(spec.config) for spec in models.embedders]
        self.encoder = load_encoder(detector=(det_cfg, models.detector.weights),
                                    embedders=[(cfg, spec.weights) for cfg, spec in zip(embed_cfgs, models.embedders)],
                                    device=self.device)
        self.infer = det_cfg.infer
        self.runners = self.encoder.runners
        self.dim = self.encoder.dim
        self.rules = load_rules(settings, models)
        self.matcher = GalleryMatcher(self.rules)
        self.models = model_identity(models)
        batching = settings.batching
        self.admission = Admission(batching.max_pending, batching.max_queue_wait_s)
        self.pixels = PixelBudget(settings.limits.max_pixels_in_flight)
        self.wait_for_pixels = False
        """Wait for room in the pixel budget instead of refusing (the offline rebuild, which has no client)."""
        self.io = ThreadPoolExecutor(batching.decode_workers, thread_name_prefix="decode")

        def observer(model: str):
            def observe(items: int, jobs: int) -> None:
                metrics.batch_size.observe(items, model)
                metrics.batch_requests.observe(jobs, model)
            return observe

        queue = 4 * batching.max_pending
        self.detect_batcher = MicroBatcher("detector", self._detect, batching.max_crops,
                                           batching.max_wait_ms / 1000, queue, observer("detector"))
        self.embed_batcher = MicroBatcher("embedder", self._embed, batching.max_crops,
                                          batching.max_wait_ms / 1000, queue, observer("embedder"))

    def close(self) -> None:
        self.detect_batcher.close()
        self.embed_batcher.close()
        self.io.shutdown(wait=False, cancel_futures=True)

    def _detect(self, key: tuple[int, ...], pictures: list[np.ndarray]) -> list:
        return self.encoder.detector(pictures, key[0], key[1])

    def _embed(self, _key: None, crops: list[tuple[np.ndarray, int]]) -> np.ndarray:
        return embed_crops(self.runners, [c for c, _ in crops], [g for _, g in crops])

    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    def _check_request_pixels(self, pixels: int, what: str) -> None:
        if pixels > self.limits.max_request_pixels:
            raise Refused("too_many_pixels", f"{what} come to {pixels} pixels; the limit of one request is "
                                                   f"{self.limits.max_request_pixels} pixels")

    def _image_sizes(self, files: Sequence[Path], strict: bool) -> tuple[list[tuple[Path, int]], list[str]]:
        """Each readable image with its pixel count from the header alone, and the skipped ones: nothing decoded."""
        sized, skipped = [], []
        for path in files:
            try:
                width, height = image_size(path)
            except DataError as exc:
                skipped.append(_refuse_or_skip(exc, path, strict))
                continue
            if width * height > self.limits.max_image_pixels:
                raise Refused("image_too_large", f"{path.name}: {width}x{height} pixels; the limit is "
                                                       f"{self.limits.max_image_pixels} pixels")
            sized.append((path, width * height))
        return sized, skipped

    async def embed_item(self, source_id: str, files: Sequence[Path], origin: str,
                         strict: bool = True) -> SourceBoxes:
        """Boxes and vectors of a shop-image folder; ``strict`` refuses any unreadable file, else skips it.

        Sizes come from the headers first: a request over the pixel limits is refused before any decoding.
        """
        if len(files) > self.limits.max_images:
            raise Refused("too_many_images", f"{len(files)} images; the limit is {self.limits.max_images}")
        sized, skipped = await self._in_thread(self._image_sizes, files, strict)
        pixels = sum(n for _, n in sized)
        self._check_request_pixels(pixels, f"{len(sized)} images")
        async with self.pixels.hold(pixels, self.wait_for_pixels):
            source = Source("item", source_id, tuple(str(path) for path, _ in sized))

            def unreadable(exc: DataError) -> None:
                skipped.append(_refuse_or_skip(exc, Path(exc.path), strict))

            read = await self._in_thread(lambda: read_source(source, backend=self.settings.video_backend,
                                                             on_unreadable_image=unreadable))
            if not read.pictures:
                raise Refused("corrupt_file", "no readable image: " + "; ".join(skipped))
            key = (self.infer.image_short_side, self.infer.image_max_size)
            found = await self.detect_batcher.run(key, [p.pixels for p in read.pictures])
            return await self._encoded(read, found, origin, skipped)

    async def embed_clip(self, source_id: str, path: Path, origin: str) -> SourceBoxes:
        """Boxes and vectors of a clip's sampled frames (the detector config's ``frames``), decoded once.

        The container's header gives the frame size: sampled frames x frame size is checked against the pixel
        limits before any frame is decoded.
        """
        backend = self.settings.video_backend
        try:
            info = await self._in_thread(probe, path, backend)
        except DataError as exc:
            raise Refused("corrupt_file", f"{path.name}: {_problem(exc, path)}") from None
        seconds = info.num_frames / info.fps if info.fps > 0 else 0.0
        if info.num_frames > self.limits.max_clip_frames or seconds > self.limits.max_clip_seconds:
            raise Refused("clip_too_long", f"{path.name}: {info.num_frames} frames, {seconds:.1f} s; the "
                                           f"limits are {self.limits.max_clip_frames} frames and "
                                           f"{self.limits.max_clip_seconds:g} s")
        if info.width * info.height > self.limits.max_image_pixels:
            raise Refused("image_too_large", f"{path.name}: frames of {info.width}x{info.height} pixels; "
                                             f"the limit is {self.limits.max_image_pixels} pixels")
        pixels = len(self.infer.frames) * info.width * info.height
        self._check_request_pixels(pixels, f"{path.name}: {len(self.infer.frames)} sampled frames of "
                                           f"{info.width}x{info.height}")
        async with self.pixels.hold(pixels, self.wait_for_pixels):
            source = Source("clip", source_id, (str(path),), tuple(self.infer.frames))
            try:
                read = await self._in_thread(lambda: read_source(source, backend=backend))
            except DataError as exc:
                raise Refused("corrupt_file", f"{path.name}: {_problem(exc, path)}") from None
            height, width = read.pictures[0].pixels.shape[:2] if read.pictures else (info.height, info.width)
            key = (self.infer.video_short_side, self.infer.video_max_size, height, width)
            found = await self.detect_batcher.run(key, [p.pixels for p in read.pictures])
            skipped = [f"frames {read.missing['frames']} not in the clip"] if read.missing else []
            return await self._encoded(read, found, origin, skipped)

    async def _encoded(self, read: SourcePictures, found: list, origin: str, skipped: list[str]) -> SourceBoxes:
        """The rest of the per-source path: the boxes over threshold, their crops, their vectors."""
        refs, _ = detected_boxes(read.source, read.pictures, found, self.infer)
        kept, crops = cut_crops(refs, read.pictures, IssueLog())
        rows = await self.embed_batcher.run(None, [(c, r.group) for c, r in zip(crops, kept)])
        vectors = np.asarray(rows, np.float32).reshape(-1, self.dim)
        return source_boxes(EncodedSource(read.source, kept, vectors, pictures=len(read.pictures)), origin, skipped)

    def match(self, query: SourceBoxes, snapshot: Snapshot) -> dict[str, Any]:
        """The answer for one query against the gallery (CPU work; call it in a thread)."""
        return self.matcher.match(query, snapshot)

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "dim": self.dim, "models": self.models,
                "vote": json.loads(self.rules.model_dump_json())}
