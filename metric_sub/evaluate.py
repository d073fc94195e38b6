"""Retrieval metrics of embeddings from shop-image crops to clip crops.

Recall@k asks the question the matcher depends on: starting from a shop
image's box, is a box of the same instance among the k nearest clip boxes?
"Match acc" is the seed's validation number, kept so runs can be compared
with its logs: per instance, average the image crops and the clip crops, and
count the clip instances whose nearest image instance is the right one.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def recall_at_k(queries: np.ndarray, query_ids: Sequence[int], gallery: np.ndarray, gallery_ids: Sequence[int],
                ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Share of queries with a same-id gallery row among their k nearest (cosine).

    Queries whose id has no gallery row cannot be found and are left out;
    ``queries`` counts the ones scored.
    """
    query_ids = np.asarray(query_ids)
    gallery_ids = np.asarray(gallery_ids)
    keep = np.isin(query_ids, gallery_ids)
    result: dict[str, float] = {"queries": int(keep.sum())}
    if not keep.any() or len(gallery_ids) == 0:
        return result | {f"recall@{k}": 0.0 for k in ks}
    similarity = _normalise(queries[keep]) @ _normalise(gallery).T
    order = np.argsort(-similarity, axis=1, kind="stable")
    hits = gallery_ids[order] == query_ids[keep][:, None]
    for k in ks:
        result[f"recall@{k}"] = float(hits[:, :k].any(axis=1).mean())
    return result


def _instance_means(embeddings: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique = np.unique(ids)
    means = np.stack([_normalise(embeddings[ids == i]).mean(axis=0) for i in unique])
    return unique, _normalise(means)


def match_accuracy(image_embeddings: np.ndarray, image_ids: Sequence[int], video_embeddings: np.ndarray,
                   video_ids: Sequence[int]) -> float:
    """The seed's "match acc" over the instances that have both image and clip crops."""
    image_ids = np.asarray(image_ids)
    video_ids = np.asarray(video_ids)
    shared = np.intersect1d(image_ids, video_ids)
    if len(shared) == 0:
        return 0.0
    image_mask = np.isin(image_ids, shared)
    video_mask = np.isin(video_ids, shared)
    gallery_ids, gallery = _instance_means(image_embeddings[image_mask], image_ids[image_mask])
    query_ids, queries = _instance_means(video_embeddings[video_mask], video_ids[video_mask])
    nearest = gallery_ids[np.argmax(queries @ gallery.T, axis=1)]
    return float((nearest == query_ids).mean())


def retrieval_report(embeddings: np.ndarray, kinds: Sequence[str], instance_ids: Sequence[int],
                     ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Recall@k (shop-image crops -> clip crops) and match acc of one embedded crop set."""
    kinds = np.asarray(kinds)
    ids = np.asarray(instance_ids)
    image, video = kinds == "image", kinds == "video"
    report = recall_at_k(embeddings[image], ids[image], embeddings[video], ids[video], ks)
    report["match_acc"] = match_accuracy(embeddings[image], ids[image], embeddings[video], ids[video])
    return report
