"""A contact sheet: one row per clip with a few annotated frames and its item's shop images, boxes drawn.

It is built from the written files (decoded video, JPEGs, parsed annotation
JSON), so it also shows what a reader of the dataset gets.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from dataset.frames import read_frames
from dataset.images import read_image, write_image
from dataset.layout import load_dataset
from dataset.records import Instance

FRAME_HEIGHT = 320
SHOP_SIDE = 150
ROWS = 5


def instance_colour(instance_id: int) -> tuple[int, int, int]:
    """A stable bright colour per product; white for garments that are not the product (id 0)."""
    if instance_id == 0:
        return (255, 255, 255)
    hue = (instance_id * 47) % 180
    hsv = np.uint8([[[hue, 230, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])  # type: ignore[return-value]


def draw_boxes(image: np.ndarray, instances: tuple[Instance, ...], scale: float) -> np.ndarray:
    """A resized copy of an image with its boxes drawn (product boxes thick, others thin)."""
    h, w = image.shape[:2]
    out = cv2.resize(image, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
    for inst in instances:
        x1, y1, x2, y2 = (int(round(v * scale)) for v in inst.box)
        colour = instance_colour(inst.instance_id)
        cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, 2 if inst.instance_id else 1)
        tag = f"{inst.instance_id or 0} v{inst.viewpoint} d{inst.display}"
        cv2.putText(out, tag, (x1 + 2, max(y1 + 11, 11)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, colour, 1, cv2.LINE_AA)
    return out


def _caption(tile: np.ndarray, text: str) -> None:
    cv2.rectangle(tile, (0, 0), (tile.shape[1], 16), (0, 0, 0), -1)
    cv2.putText(tile, text, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)


def _pick_clips(video_ids: list[str], items: set[str]) -> list[str]:
    """A few catalogue clips and, when there is one, a clip without a catalogue match."""
    inside = [v for v in video_ids if v in items]
    outside = [v for v in video_ids if v not in items]
    chosen = inside[: ROWS - 1 if outside else ROWS] + outside[:1]
    return chosen


def write_contact_sheet(root: Path, path: Path) -> Path:
    """Write the sheet for the dataset at ``root`` to ``path`` (PNG)."""
    data = load_dataset(root)
    rows = []
    for video_id in _pick_clips(sorted(data.videos), set(data.items)):
        video = data.videos[video_id]
        annotated = [f for f in video.frames or ()]
        picks = [annotated[k] for k in sorted({0, len(annotated) // 2, len(annotated) - 1}) if annotated]
        clip = read_frames(video.path, [f.frame_index for f in picks], backend="opencv")
        decoded = dict(zip(clip.indices, clip.frames))
        tiles = []
        for frame in picks:
            pixels = decoded.get(frame.frame_index)
            if pixels is None:
                continue
            tile = draw_boxes(pixels, frame.instances, FRAME_HEIGHT / pixels.shape[0])
            _caption(tile, f"{video_id} f{frame.frame_index}")
            tiles.append(tile)
        shop = []
        item = data.items.get(video_id)
        for image in (item.images if item else ())[:6]:
            pixels = read_image(image.path)
            tile = draw_boxes(pixels, image.instances or (), SHOP_SIDE / pixels.shape[0])
            _caption(tile, f"{image.item_id}/{image.img_name}")
            shop.append(tile)
        if not item:
            blank = np.full((SHOP_SIDE, SHOP_SIDE, 3), 40, np.uint8)
            _caption(blank, "not in catalogue")
            shop.append(blank)
        rows.append(_row(tiles, shop))
    width = max(r.shape[1] for r in rows) if rows else 1
    sheet = np.vstack([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]) \
        if rows else np.full((16, 16, 3), 255, np.uint8)
    return write_image(path, sheet)


def _row(frames: list[np.ndarray], shop: list[np.ndarray]) -> np.ndarray:
    """Frames side by side, then shop images in a grid two high, all on one strip."""
    height = FRAME_HEIGHT
    parts = [np.pad(f, ((0, height - f.shape[0]), (0, 4), (0, 0)), constant_values=255) for f in frames]
    columns = [shop[k:k + 2] for k in range(0, len(shop), 2)]
    for column in columns:
        stacked = np.vstack([np.pad(t, ((0, 4), (0, 4), (0, 0)), constant_values=255) for t in column])
        parts.append(np.pad(stacked, ((0, height - stacked.shape[0]), (0, 0), (0, 0)), constant_values=255))
    return np.hstack(parts)
