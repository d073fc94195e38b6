"""Detection, embedding and matching per request, with the batch pipeline's stage code.

The models are loaded once. A shop-image folder or a clip goes through the
same steps as in ``run.sh``: pixels read by ``dataset`` (a clip's sampled
frames decoded once), boxes by ``bbox_sub``'s ``BatchDetector`` and
``box_records`` with the detector config's inference settings, crops by
``metric_sub.buckets.crop``, vectors by ``metric_sub.embed.embed_crops`` (the
fused ensemble), the decision by ``metric_sub.vote`` with the matcher config
``run.sh`` uses. Model calls go through micro-batchers (``service.batcher``),
so they run off the event loop and share batches across requests.

What a query is matched against reproduces ``run.sh`` on the gallery plus
the query: the query takes the place of a gallery entry with the same kind
and id, every indexed item and clip votes as in the batch run (the
gallery's own votes are computed once per gallery generation), and the
one-to-one assignment and the cutoff decide. So a folder or clip of a
dataset whose other items and clips are indexed gets the pair ``run.sh``
writes for it.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bbox_sub.config import load_detector_config
from bbox_sub.detect import BatchDetector
from bbox_sub.infer import box_records
from bbox_sub.model import load_detector
from dataset.errors import DataError
from dataset.frames import probe, read_frames
from dataset.images import image_size, read_image
from dataset.runtime import pick_device
from metric_sub.buckets import crop
from metric_sub.config import load_embedder_config
from metric_sub.embed import embed_crops, load_runner
from metric_sub.index import GalleryIndex
from metric_sub.match import load_match_config
from metric_sub.vote import BoxTable, Candidate, Retrievals, resolve, vote_all
from service.batcher import Admission, MicroBatcher
from service.errors import ApiError
from service.gallery import Kind, Snapshot, SourceBoxes
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


def _concat(a: BoxTable, b: BoxTable) -> BoxTable:
    return BoxTable(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in
                      ("source", "score", "frame", "box", "name", "vectors")))


def _retrievals(distances: np.ndarray, rows: np.ndarray) -> Retrievals:
    ok = rows >= 0
    return Retrievals(np.flatnonzero(ok), rows[ok], distances[ok].astype(np.float64))


def _nearest(index: GalleryIndex, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distances, rows = index.search(vectors, 1)
    return distances[:, 0].astype(np.float64), rows[:, 0]


def pair_json(c: Candidate) -> dict[str, Any]:
    return {"item_id": c.item_id, "video_id": c.video_id, "img_name": c.img_name, "item_box": list(c.item_box),
            "frame_index": c.frame_index, "frame_box": list(c.frame_box), "distance": round(c.distance, 6),
            "votes": c.votes}


@dataclass(frozen=True)
class GalleryVotes:
    """The indexed entries voting among themselves: each group box's nearest target and the candidates."""

    distances: np.ndarray
    rows: np.ndarray
    candidates: list[Candidate]


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
        self.models = {"detector": [det_cfg.name, _file_digest(settings.detector.weights)],
                       "embedders": [[c.name, c.model.embedding_size, _file_digest(s.weights)]
                                     for c, s in zip(embed_cfgs, settings.embedders)]}
        batching = settings.batching
        self.admission = Admission(batching.max_pending)
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

    async def embed_item(self, source_id: str, files: Sequence[Path], origin: str,
                         strict: bool = True) -> SourceBoxes:
        """Boxes and vectors of a shop-image folder; ``strict`` refuses any unreadable file, else skips it."""
        if len(files) > self.limits.max_images:
            raise ApiError(422, "too_many_images", f"{len(files)} images; the limit is {self.limits.max_images}")
        pictures, names, skipped = [], [], []
        for path in files:
            try:
                width, height = image_size(path)
                if width * height > self.limits.max_image_pixels:
                    raise ApiError(422, "image_too_large", f"{path.name}: {width}x{height} pixels; the limit is "
                                                           f"{self.limits.max_image_pixels} pixels")
                pictures.append(await self._in_thread(read_image, path))
                names.append(path.stem)
            except DataError as exc:
                if strict:
                    raise ApiError(422, "corrupt_file", f"{path.name}: {exc.problem}") from None
                skipped.append(f"{path.name}: {exc.problem}")
        if not pictures:
            raise ApiError(422, "corrupt_file", "no readable image: " + "; ".join(skipped))
        found = await self.detect_batcher.run((self.infer.image_short_side, self.infer.image_max_size), pictures)
        records = []
        for n, (picture, detections) in enumerate(zip(pictures, found)):
            records += box_records(detections, self.infer.image_score_thresh, picture.shape[1], picture.shape[0],
                                   {"picture": n, "name": names[n], "frame": -1})
        return await self._source("item", source_id, origin, records, pictures, skipped)

    async def embed_clip(self, source_id: str, path: Path, origin: str) -> SourceBoxes:
        """Boxes and vectors of a clip's sampled frames (the detector config's ``frames``), decoded once."""
        try:
            info = await self._in_thread(probe, path)
        except DataError as exc:
            raise ApiError(422, "corrupt_file", f"{path.name}: {exc.problem}") from None
        seconds = info.num_frames / info.fps if info.fps > 0 else 0.0
        if info.num_frames > self.limits.max_clip_frames or seconds > self.limits.max_clip_seconds:
            raise ApiError(422, "clip_too_long", f"{path.name}: {info.num_frames} frames, {seconds:.1f} s; the "
                                                 f"limits are {self.limits.max_clip_frames} frames and "
                                                 f"{self.limits.max_clip_seconds:g} s")
        if info.width * info.height > self.limits.max_image_pixels:
            raise ApiError(422, "image_too_large", f"{path.name}: frames of {info.width}x{info.height} pixels")
        try:
            clip = await self._in_thread(read_frames, path, self.infer.frames)
        except DataError as exc:
            raise ApiError(422, "corrupt_file", f"{path.name}: {exc.problem}") from None
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

    # Matching ---------------------------------------------------------------------------------------------

    @property
    def group_kind(self) -> Kind:
        """The side whose entries vote (items in the seed's direction)."""
        return "item" if self.rules.direction == "shop_to_clip" else "clip"

    def _gallery_votes(self, snapshot: Snapshot) -> GalleryVotes:
        with snapshot.cache_lock:
            if "votes" not in snapshot.cache:
                groups = snapshot.sides[self.group_kind]
                targets = snapshot.sides["clip" if self.group_kind == "item" else "item"]
                distances, rows = _nearest(targets.index, groups.index.vectors)
                candidates, _ = vote_all(_retrievals(distances, rows), groups.table, targets.table, self.rules)
                snapshot.cache["votes"] = GalleryVotes(distances, rows, candidates)
            return snapshot.cache["votes"]

    def match(self, query: SourceBoxes, snapshot: Snapshot) -> dict[str, Any]:
        """The answer for one query against the gallery (CPU work; call it in a thread)."""
        shop_to_clip = self.rules.direction == "shop_to_clip"

        def group_of(c: Candidate) -> str:
            return c.item_id if shop_to_clip else c.video_id

        def target_of(c: Candidate) -> str:
            return c.video_id if shop_to_clip else c.item_id

        groups = snapshot.sides[self.group_kind]
        targets = snapshot.sides["clip" if self.group_kind == "item" else "item"]
        base = self._gallery_votes(snapshot)
        abstained: dict[str, str] = {}
        if query.kind == self.group_kind:
            distances, rows = _nearest(targets.index, query.vectors)
            mine, abstained = vote_all(_retrievals(distances, rows), query.table(), targets.table, self.rules)
            candidates = [c for c in base.candidates if group_of(c) != query.source_id] + mine
            involved = [c for c in candidates if group_of(c) == query.source_id]
        else:
            keep = targets.table.source != query.source_id
            if keep.all():
                distances, rows = base.distances, base.rows
            else:  # the query replaces the indexed entry with its id
                filtered = GalleryIndex(self.dim, device=targets.index.device)
                filtered.add(targets.index.vectors[keep], np.flatnonzero(keep))
                distances, rows = _nearest(filtered, groups.index.vectors)
            if len(query.boxes):
                own = GalleryIndex(self.dim, device=targets.index.device)
                own.add(query.vectors, len(targets) + np.arange(len(query.boxes)))
                own_distances, own_rows = _nearest(own, groups.index.vectors)
                closer = own_distances < distances
                distances, rows = np.where(closer, own_distances, distances), np.where(closer, own_rows, rows)
            table = _concat(targets.table, query.table())
            candidates, _ = vote_all(_retrievals(distances, rows), groups.table, table, self.rules)
            involved = [c for c in candidates if target_of(c) == query.source_id]
        kept, dropped = resolve(candidates, self.rules)
        side = (lambda c: c.item_id) if query.kind == "item" else (lambda c: c.video_id)
        match = next((c for c in kept if side(c) == query.source_id), None)
        listed = [{**pair_json(c), "kept": c in kept, "why": dropped.get((c.video_id, c.item_id), "")}
                  for c in sorted(involved, key=lambda c: c.distance)]
        return {"match": pair_json(match) if match else None,
                "reason": self._reason(query, match, abstained, listed),
                "candidates": listed}

    def _reason(self, query: SourceBoxes, match: Candidate | None, abstained: dict[str, str],
                listed: list[dict]) -> str:
        if match is not None:
            return f"matched at distance {match.distance:.3f}"
        if not query.boxes:
            return "no garment box detected"
        if query.source_id in abstained:
            return abstained[query.source_id]
        if listed:
            return "; ".join(f"{c['item_id'] if query.kind == 'clip' else c['video_id']}: {c['why']}"
                             for c in listed)
        return "nothing in the gallery voted for it" if query.kind != self.group_kind else "no vote"

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "dim": self.dim, "models": self.models,
                "vote": json.loads(self.rules.model_dump_json())}
