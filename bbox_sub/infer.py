"""Detecting garments in every shop image and in the sampled frames of every clip of a dataset.

``python -m bbox_sub.infer --config seed_vovnet99 --weights DIR/model_final.pth --data ROOT [ROOT ...] --out boxes.json``

Images are decoded in worker threads and go through the network in batches;
the sampled frames of a clip are decoded once (``dataset.frames``) and go
through as one batch, while the next clips decode. Results of every finished
file are appended to ``<out>.cache.jsonl``, so a crashed or interrupted run
continues where it stopped; the output itself is written atomically at the
end (schema: ``dataset.boxes_file``). A corrupt image or clip is reported and
skipped; sampled frames a clip does not hold are listed in ``missing_frames``.
A resumed run says how many files it found done (``resumed``).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dataset.boxes import aspect_group, box_aspect
from bbox_sub.config import DetectorConfig, InferConfig, load_detector_config
from bbox_sub.detect import BatchDetector, Detections
from bbox_sub.model import load_detector
from dataset.boxes_file import FORMAT, VERSION, validate_boxes
from dataset.boxes import clip_box, is_degenerate
from dataset.errors import DataError, IssueLog
from dataset.frames import read_frames_many
from dataset.images import read_image
from dataset.jsonio import digest, file_stamp, write_json_atomic
from dataset.layout import load_dataset
from dataset.prefetch import prefetch
from dataset.records import Dataset, ShopImage, Video
from runtime.device import pick_device

log = logging.getLogger(__name__)


def box_records(found: Detections, threshold: float, width: int, height: int,
                fields: dict[str, Any]) -> list[dict[str, Any]]:
    """Boxes at or above ``threshold`` as schema records: clipped, truncated to int, with aspect group."""
    records = []
    for box, score in zip(found.boxes, found.scores):
        if score < threshold:
            continue
        bbox = clip_box(box, width, height)
        if is_degenerate(bbox):
            continue
        records.append({**fields, "width": width, "height": height, "bbox": list(bbox),
                        "score": round(float(score), 6), "bbox_aspect": round(box_aspect(bbox), 6),
                        "aspect_group": aspect_group(bbox)})
    return records


class ResultCache:
    """Per-file results appended as JSON lines next to the output, valid for one config and weights.

    A line cut short by a crash is ignored; a different fingerprint starts the cache over.
    ``missing`` keeps, per clip, the sampled frames the file did not hold, so a
    resumed run still reports them.
    """

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.done: dict[str, list[dict[str, Any]]] = {}
        self.missing: dict[str, dict[str, Any]] = {}
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        header = _json_or_none(lines[0]) if lines else None
        if header is not None and header.get("fingerprint") == fingerprint:
            for line in lines[1:]:
                record = _json_or_none(line)
                if record is not None:
                    self.done[record["key"]] = record["boxes"]
                    if record.get("missing"):
                        self.missing[record["key"]] = record["missing"]
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"fingerprint": fingerprint}) + "\n", encoding="utf-8")
        self._file = path.open("a", encoding="utf-8")

    def add(self, key: str, boxes: list[dict[str, Any]], missing: dict[str, Any] | None = None) -> None:
        self.done[key] = boxes
        record: dict[str, Any] = {"key": key, "boxes": boxes}
        if missing:
            self.missing[key] = record["missing"] = missing
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _json_or_none(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def fingerprint(cfg: DetectorConfig, weights: Path) -> str:
    """Changes when the model, the inference settings or the weights file change."""
    return digest(cfg.model.model_dump(mode="json"), cfg.infer.model_dump(mode="json"), file_stamp(weights))


def _image_key(image: ShopImage) -> str:
    return f"image:{image.path}"


def _video_key(video: Video) -> str:
    return f"video:{video.path}"


def detect_images(detector: BatchDetector, images: list[ShopImage], settings: InferConfig, cache: ResultCache,
                  issues: IssueLog, progress: tqdm) -> None:
    def flush(batch: list[tuple[ShopImage, np.ndarray]]) -> None:
        found = detector([pixels for _, pixels in batch], settings.image_short_side, settings.image_max_size)
        for (image, pixels), detections in zip(batch, found):
            fields = {"type": "image", "item_id": image.item_id, "img_name": image.img_name, "file": str(image.path)}
            cache.add(_image_key(image), box_records(detections, settings.image_score_thresh,
                                                     pixels.shape[1], pixels.shape[0], fields))
        progress.update(len(batch))

    batch: list[tuple[ShopImage, np.ndarray]] = []
    for image, pixels in prefetch(lambda im: read_image(im.path), images, settings.decode_workers):
        if isinstance(pixels, Exception):
            issues.error(pixels, image.path)
            progress.update(1)
            continue
        batch.append((image, pixels))
        if len(batch) == settings.image_batch:
            flush(batch)
            batch = []
    if batch:
        flush(batch)


def detect_videos(detector: BatchDetector, videos: list[Video], settings: InferConfig, cache: ResultCache,
                  issues: IssueLog, progress: tqdm) -> None:
    by_path = {v.path: v for v in videos}
    seen: set[Path] = set()
    requests = [(v.path, settings.frames) for v in videos]
    for path, clip in read_frames_many(requests, issues, workers=settings.decode_workers):
        seen.add(path)
        video = by_path[path]
        found = detector(clip.frames, settings.video_short_side, settings.video_max_size)
        boxes = []
        for index, detections in zip(clip.indices, found):
            fields = {"type": "video", "video_id": video.video_id, "frame": index, "file": str(video.path)}
            boxes += box_records(detections, settings.video_score_thresh, clip.width, clip.height, fields)
        missing = {"frames": clip.missing, "file_frames": clip.num_frames} if clip.missing else None
        cache.add(_video_key(video), boxes, missing)
        progress.update(1)
    progress.update(len(videos) - len(seen))


def run_inference(cfg: DetectorConfig, weights: Path, roots: list[Path], out: Path, device: str = "auto",
                  issues: IssueLog | None = None, progress: bool = True) -> dict[str, Any]:
    """Detect in every image and clip of ``roots``; writes ``out`` and returns the document written."""
    issues = issues if issues is not None else IssueLog()
    settings = cfg.infer
    data: Dataset = load_dataset(roots, issues)
    images = [image for item in data.items.values() for image in item.images]
    videos = list(data.videos.values())
    cache = ResultCache(out.with_name(out.name + ".cache.jsonl"), fingerprint(cfg, weights))
    try:
        todo_images = [im for im in images if _image_key(im) not in cache.done]
        todo_videos = [v for v in videos if _video_key(v) not in cache.done]
        resumed = {"images": len(images) - len(todo_images), "videos": len(videos) - len(todo_videos)}
        if resumed["images"] or resumed["videos"]:
            log.info("resuming: %d of %d images and %d of %d clips found done in %s; skipped",
                     resumed["images"], len(images), resumed["videos"], len(videos), cache.path)
        if todo_images or todo_videos:
            torch_device = pick_device(device)
            model = load_detector(cfg.model, weights, torch_device)
            detector = BatchDetector(model, torch_device, settings.precision, settings.channels_last,
                                     settings.compile)
            with tqdm(total=len(todo_images), desc="images", unit="img", dynamic_ncols=True,
                      disable=not progress) as bar:
                detect_images(detector, todo_images, settings, cache, issues, bar)
            with tqdm(total=len(todo_videos), desc="clips", unit="clip", dynamic_ncols=True,
                      disable=not progress) as bar:
                detect_videos(detector, todo_videos, settings, cache, issues, bar)
    finally:
        cache.close()
    document = {
        "format": FORMAT, "version": VERSION, "config": cfg.name, "weights": str(weights),
        "settings": settings.model_dump(mode="json"),
        "processed": {"images": sum(_image_key(im) in cache.done for im in images),
                      "videos": sum(_video_key(v) in cache.done for v in videos)},
        "skipped": [{"path": i.path, "problem": i.problem} for i in issues.errors],
        "resumed": resumed,
        "missing_frames": [{"video_id": v.video_id, "file": str(v.path), **cache.missing[_video_key(v)]}
                           for v in videos if _video_key(v) in cache.missing],
        "images": [box for im in images for box in cache.done.get(_image_key(im), [])],
        "videos": [box for v in videos for box in cache.done.get(_video_key(v), [])],
    }
    validate_boxes(document, str(out))
    write_json_atomic(out, document)
    return document


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a config name (tiny, vovnet39, ...) or a YAML path")
    parser.add_argument("--weights", required=True, type=Path)
    parser.add_argument("--data", required=True, nargs="+", type=Path, help="dataset roots")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    issues = IssueLog()
    try:
        cfg = load_detector_config(args.config, args.set)
        document = run_inference(cfg, args.weights, args.data, args.out, args.device, issues)
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"{args.out}: {len(document['images'])} image boxes, {len(document['videos'])} clip boxes; "
          f"processed {document['processed']}; skipped {len(document['skipped'])}")
    for issue in issues.errors:
        print(f"skipped {issue.path}: {issue.problem}")


if __name__ == "__main__":
    main()
