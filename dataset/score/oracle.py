"""A result.json built from ground truth: the upper bound a pipeline can reach on a dataset.

It checks the scorer end to end (it must score 1.0 wherever every truth item
has shop images) and gives demos a valid result without any model.
"""
from __future__ import annotations

from typing import Any

from dataset.identity import item_of_instance
from dataset.records import Dataset, Instance, Item, Video
from dataset.score.metric import ShopTruth, item_boxes

MIN_FRAME = 80
"""Frames before 80 often do not show the product yet (seed README); they are used only when nothing later does."""


def _area(box: tuple[int, int, int, int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _frame_choice(video: Video, dataset: Dataset) -> tuple[str, int, Instance] | None:
    """The largest box of a catalogue item, preferring frames >= 80: (item, frame index, box)."""
    candidates = [(frame.frame_index, inst) for frame in video.frames or () for inst in frame.instances
                  if item_of_instance(inst.instance_id) in dataset.items]
    late = [c for c in candidates if c[0] >= MIN_FRAME]
    pool = late or candidates
    if not pool:
        return None
    frame_index, inst = max(pool, key=lambda c: (_area(c[1].box), -c[0]))
    return item_of_instance(inst.instance_id), frame_index, inst


def _shop_choice(item: Item, shop: ShopTruth) -> tuple[str, list[int]]:
    """The shop image with the largest box of the item; else an image without boxes, judged as a whole.

    An item whose every image has boxes, none of them its own, cannot pass the
    box level; its first image is returned so the clip still scores the other levels.
    """
    boxed = [(image, box) for image in item.images for box in item_boxes(image.instances or (), item.item_id)]
    if boxed:
        image, box = max(boxed, key=lambda c: _area(c[1]))
        return image.stem, list(box)
    image = next((im for im in item.images if not im.instances), item.images[0])
    width, height = shop.size(image)
    return image.stem, [0, 0, width, height]


def oracle_result(dataset: Dataset) -> dict[str, Any]:
    """A result dict from ground truth: for each annotated clip showing a catalogue item, a correct match."""
    shop = ShopTruth(dataset)
    result: dict[str, Any] = {}
    for video_id in sorted(dataset.videos):
        choice = _frame_choice(dataset.videos[video_id], dataset)
        if choice is None:
            continue
        item_id, frame_index, inst = choice
        img_name, item_box = _shop_choice(dataset.items[item_id], shop)
        result[video_id] = {"item_id": item_id, "frame_index": frame_index,
                            "result": [{"img_name": img_name, "item_box": item_box,
                                        "frame_box": list(inst.box)}]}
    return result
