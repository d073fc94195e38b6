"""Aspect buckets, one-bucket batches, augmentation and the retrieval metrics."""
from __future__ import annotations

import numpy as np
import pytest

from dataset.boxes import ASPECT_TEMPLATES
from metric_sub.augment import Augmenter, seed_pipeline
from metric_sub.buckets import aspect_group, crop, limit_side, resize_to_bucket
from metric_sub.config import SM_SIZES, load_embedder_config
from metric_sub.data import GroupedBatchSampler
from metric_sub.evaluate import match_accuracy, recall_at_k


def test_sm_table_matches_the_aspect_templates() -> None:
    assert [round(w / h, 3) for w, h in SM_SIZES] == [round(t, 3) for t in ASPECT_TEMPLATES]


def test_every_crop_lands_in_the_bucket_of_nearest_aspect() -> None:
    rng = np.random.default_rng(0)
    sizes = load_embedder_config("seed_b5a").bucket_sizes()
    assert sizes == list(SM_SIZES)
    image = rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)
    for _ in range(300):
        x1, y1 = rng.integers(0, 700), rng.integers(0, 500)
        box = (int(x1), int(y1), int(x1 + rng.integers(2, 100)), int(y1 + rng.integers(2, 100)))
        group = aspect_group(box)
        aspect = (box[2] - box[0]) / (box[3] - box[1])
        distances = [abs(w / h - aspect) for w, h in sizes]
        assert distances[group] == pytest.approx(min(distances))
        patch = resize_to_bucket(crop(image, box), sizes[group])
        assert patch.shape == (sizes[group][1], sizes[group][0], 3)


def test_scaled_tables_keep_the_bucket_order() -> None:
    tiny = load_embedder_config("tiny").bucket_sizes()
    ratios = [w / h for w, h in tiny]
    assert ratios == sorted(ratios) and len(tiny) == 12


def test_crop_clips_to_the_image_and_refuses_empty_boxes() -> None:
    image = np.zeros((50, 40, 3), np.uint8)
    assert crop(image, (30, 40, 90, 90)).shape == (10, 10, 3)
    assert crop(image, (45, 10, 60, 20)) is None
    assert limit_side(np.zeros((1000, 250, 3), np.uint8), 500).shape == (500, 125, 3)


def test_grouped_batches_hold_one_bucket_and_depend_only_on_seed_and_epoch() -> None:
    groups = [i % 5 for i in range(103)]
    sampler = GroupedBatchSampler(groups, batch_size=4, shuffle=True, drop_uneven=True, seed=3)
    first = sampler.batches(0)
    assert first == GroupedBatchSampler(groups, 4, True, True, seed=3).batches(0)
    assert first != sampler.batches(1)
    assert all(len(b) == 4 and len({groups[i] for i in b}) == 1 for b in first)
    everything = GroupedBatchSampler(groups, 4, shuffle=False, drop_uneven=False).batches(0)
    assert sorted(i for b in everything for i in b) == list(range(103))
    assert all(len({groups[i] for i in b}) == 1 for b in everything)


def test_augmentation_is_reproducible_and_keeps_the_bucket_size() -> None:
    image = np.random.default_rng(1).integers(0, 256, (100, 24, 3), dtype=np.uint8)
    augment = Augmenter(seed=5)
    out = augment(image, epoch=0, index=7)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out, Augmenter(seed=5)(image, epoch=0, index=7))
    assert not all(np.array_equal(out, augment(image, epoch=e, index=7)) for e in range(1, 4))


def test_affine_translation_is_scaled_by_its_own_axis() -> None:
    """The seed multiplied x shifts by the height; a pure x shift of a tall crop must stay within 6.25 % of its width."""
    import albumentations as A

    affine = next(t for t in seed_pipeline().transforms if isinstance(t, A.Affine))
    image = np.zeros((400, 100, 3), np.uint8)
    image[:, 50] = 255
    for seed in range(20):
        only_shift = A.Compose([A.Affine(translate_percent=affine.translate_percent, p=1.0)], seed=seed)
        column = np.argmax(only_shift(image=image)["image"][200, :, 0])
        assert abs(column - 50) <= 0.0625 * 100 + 1


def test_recall_and_match_accuracy() -> None:
    gallery = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0.1, 0, 0], [0.1, 0, 1, 0], [0, 1, 0, 0.2]], np.float32)
    result = recall_at_k(queries, [0, 1, 3], gallery, [0, 1, 2, 3], ks=(1, 2))
    assert result == {"queries": 3, "recall@1": pytest.approx(1 / 3), "recall@2": pytest.approx(2 / 3)}
    assert recall_at_k(queries, [7, 8, 9], gallery, [0, 1, 2, 3])["queries"] == 0
    assert match_accuracy(gallery, [0, 1, 2, 3], queries, [0, 2, 1]) == 1.0
    assert match_accuracy(gallery, [0, 1, 2, 3], queries, [0, 1, 3]) == pytest.approx(1 / 3)
