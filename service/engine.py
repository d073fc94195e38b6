"""Detection, embedding and matching per request, with the batch pipeline's stage code.

The models are loaded once. A shop-image folder or a clip goes through the
same steps as in ``run.sh``: pixels read by ``dataset`` (a clip's sampled
frames decoded once), boxes by ``bbox_sub``'s ``BatchDetector`` and
``box_records`` with the detector config's inference settings, crops by
``metric_sub.buckets.crop``, vectors by ``metric_sub.embed.embed_crops`` (the
fused ensemble), the decision by ``service.matcher`` with the matcher config
``run.sh`` uses. Model calls go through micro-batchers (``service.batcher``),
so they run off the event loop and share batches across requests.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bbox_sub.config import load_detector_config
from bbox_sub.detect import BatchDetector
from bbox_sub.infer import box_records
from bbox_sub.model import load_detector
from dataset.errors import DataError
from dataset.frames import probe, read_frames
from dataset.images import ImageTooLarge, image_size, read_image
from metric_sub.buckets import crop
from metric_sub.config import load_embedder_config
from metric_sub.embed import embed_crops, load_runner, vector_settings
from metric_sub.match import load_match_config
from runtime.device import pick_device
from service.batcher import Admission, MicroBatcher, PixelBudget
from service.errors import ApiError
from service.gallery import Kind, Snapshot, SourceBoxes
from service.matcher import GalleryMatcher
from service.metrics import Metrics
from service.settings import Settings


def _file_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:16]


def _problem(exc: DataError, path: Path) -> str:
    """A reader's problem with the file's folder taken out: answers name files, never server paths."""
    return exc.problem.replace(str(path), path.name).replace(f"{path.parent}/", "")


def _refuse_or_skip(exc: DataError, path: Path, strict: bool) -> str:
    """An unreadable shop image: refused when too large (always) or when ``strict``, else the line that says
    it was skipped."""
    message = f"{path.name}: {_problem(exc, path)}"
    if isinstance(exc, ImageTooLarge):
        raise ApiError(422, "image_too_large", message) from None
    if strict:
        raise ApiError(422, "corrupt_file", message) from None
    return message


class Engine:
    """The loaded models, their batchers and the matcher settings."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.device = pick_device(settings.device)
        det_cfg = load_detector_config(settings.detector.config)
        if settings.detector.weights is None:
            raise ValueError("detector.weights is required (a bbox_sub checkpoint)")
        self.infer = det_cfg.infer
        self.detector = BatchDetector(load_detector(det_cfg.model, settings.detector.weights, self.device),
                                      self.device, self.infer.precision, self.infer.channels_last)
        embed_cfgs = [load_embedder_config(spec.config) for spec in settings.embedders]
        self.runners = [load_runner(cfg, spec.weights, self.device)
                        for cfg, spec in zip(embed_cfgs, settings.embedders)]
        self.dim = sum(r.dim for r in self.runners)
        self.rules = load_match_config(settings.match, settings.match_set).vote
        self.matcher = GalleryMatcher(self.rules)
        self.models = {"detector": [det_cfg.name, _file_digest(settings.detector.weights)],
                       "embedders": [[c.name, vector_settings(c), _file_digest(s.weights)]
                                     for c, s in zip(embed_cfgs, settings.embedders)]}
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
        return self.detector(pictures, key[0], key[1])

    def _embed(self, _key: None, crops: list[tuple[np.ndarray, int]]) -> np.ndarray:
        return embed_crops(self.runners, [c for c, _ in crops], [g for _, g in crops])

    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    async def _vectors(self, records: list[dict], pictures: list[np.ndarray]) -> np.ndarray:
        crops = [(crop(pictures[r["picture"]], r["bbox"]), r["aspect_group"]) for r in records]
        rows = await self.embed_batcher.run(None, crops)
        return np.asarray(rows, np.float32).reshape(-1, self.dim)

    def _check_request_pixels(self, pixels: int, what: str) -> None:
        if pixels > self.limits.max_request_pixels:
            raise ApiError(413, "too_many_pixels", f"{what} come to {pixels} pixels; the limit of one request is "
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
                raise ApiError(422, "image_too_large", f"{path.name}: {width}x{height} pixels; the limit is "
                                                       f"{self.limits.max_image_pixels} pixels")
            sized.append((path, width * height))
        return sized, skipped

    async def embed_item(self, source_id: str, files: Sequence[Path], origin: str,
                         strict: bool = True) -> SourceBoxes:
        """Boxes and vectors of a shop-image folder; ``strict`` refuses any unreadable file, else skips it.

        Sizes come from the headers first: a request over the pixel limits is refused before any decoding.
        """
        if len(files) > self.limits.max_images:
            raise ApiError(422, "too_many_images", f"{len(files)} images; the limit is {self.limits.max_images}")
        sized, skipped = await self._in_thread(self._image_sizes, files, strict)
        pixels = sum(n for _, n in sized)
        self._check_request_pixels(pixels, f"{len(sized)} images")
        async with self.pixels.hold(pixels, self.wait_for_pixels):
            pictures, names = [], []
            for path, _ in sized:
                try:
                    pictures.append(await self._in_thread(read_image, path))
                    names.append(path.stem)
                except DataError as exc:
                    skipped.append(_refuse_or_skip(exc, path, strict))
            if not pictures:
                raise ApiError(422, "corrupt_file", "no readable image: " + "; ".join(skipped))
            key = (self.infer.image_short_side, self.infer.image_max_size)
            found = await self.detect_batcher.run(key, pictures)
            records = []
            for n, (picture, detections) in enumerate(zip(pictures, found)):
                records += box_records(detections, self.infer.image_score_thresh, picture.shape[1],
                                       picture.shape[0], {"picture": n, "name": names[n], "frame": -1})
            return await self._source("item", source_id, origin, records, pictures, skipped)

    async def embed_clip(self, source_id: str, path: Path, origin: str) -> SourceBoxes:
        """Boxes and vectors of a clip's sampled frames (the detector config's ``frames``), decoded once.

        The container's header gives the frame size: sampled frames x frame size is checked against the pixel
        limits before any frame is decoded.
        """
        try:
            info = await self._in_thread(probe, path)
        except DataError as exc:
            raise ApiError(422, "corrupt_file", f"{path.name}: {_problem(exc, path)}") from None
        seconds = info.num_frames / info.fps if info.fps > 0 else 0.0
        if info.num_frames > self.limits.max_clip_frames or seconds > self.limits.max_clip_seconds:
            raise ApiError(422, "clip_too_long", f"{path.name}: {info.num_frames} frames, {seconds:.1f} s; the "
                                                 f"limits are {self.limits.max_clip_frames} frames and "
                                                 f"{self.limits.max_clip_seconds:g} s")
        if info.width * info.height > self.limits.max_image_pixels:
            raise ApiError(422, "image_too_large", f"{path.name}: frames of {info.width}x{info.height} pixels; "
                                                   f"the limit is {self.limits.max_image_pixels} pixels")
        pixels = len(self.infer.frames) * info.width * info.height
        self._check_request_pixels(pixels, f"{path.name}: {len(self.infer.frames)} sampled frames of "
                                           f"{info.width}x{info.height}")
        async with self.pixels.hold(pixels, self.wait_for_pixels):
            try:
                clip = await self._in_thread(read_frames, path, self.infer.frames)
            except DataError as exc:
                raise ApiError(422, "corrupt_file", f"{path.name}: {_problem(exc, path)}") from None
            key = (self.infer.video_short_side, self.infer.video_max_size, clip.height, clip.width)
            found = await self.detect_batcher.run(key, clip.frames)
            records = []
            for n, (frame, detections) in enumerate(zip(clip.indices, found)):
                records += box_records(detections, self.infer.video_score_thresh, clip.width, clip.height,
                                       {"picture": n, "name": "", "frame": frame})
            skipped = [f"frames {clip.missing} not in the clip"] if clip.missing else []
            return await self._source("clip", source_id, origin, records, clip.frames, skipped)

    async def _source(self, kind: Kind, source_id: str, origin: str, records: list[dict],
                      pictures: list[np.ndarray], skipped: list[str]) -> SourceBoxes:
        vectors = await self._vectors(records, pictures)
        return SourceBoxes(kind, source_id, origin, vectors, [r["name"] for r in records],
                           [r["frame"] for r in records], [tuple(r["bbox"]) for r in records],
                           [r["score"] for r in records], [r["aspect_group"] for r in records], len(pictures),
                           skipped)

    def match(self, query: SourceBoxes, snapshot: Snapshot) -> dict[str, Any]:
        """The answer for one query against the gallery (CPU work; call it in a thread)."""
        return self.matcher.match(query, snapshot)

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "dim": self.dim, "models": self.models,
                "vote": json.loads(self.rules.model_dump_json())}
