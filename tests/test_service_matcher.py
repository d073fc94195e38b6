"""The service's per-query matching gives the batch matcher's answer on the gallery plus the query.

The matcher re-votes only the groups a query can change; the reference here
is ``metric_sub.match.match_embeddings``, the code ``run.sh`` runs, on every
gallery entry with the query in the place of the entry with its id.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from metric_sub.match import MatchConfig, match_embeddings
from metric_sub.vote import VoteRules
from service.gallery import GalleryStore, Snapshot, SourceBoxes
from service.matcher import GalleryMatcher

DIM = 16
PAIRS = 12


def _noisy(centre: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors (as the embedders give) around ``centre``."""
    vectors = centre + 0.35 * rng.normal(size=(count, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _item(source_id: str, centre: np.ndarray, rng: np.random.Generator) -> SourceBoxes:
    return SourceBoxes("item", source_id, "test", _noisy(centre, 4, rng), ["0", "0", "1", "1"], [-1] * 4,
                       [(0, 0, 10 + n, 20) for n in range(4)], [0.9, 0.95, 0.92, 0.91], [0] * 4, 2)


def _clip(source_id: str, centre: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> SourceBoxes:
    vectors = np.concatenate([_noisy(centre, 4, rng), _noisy(other, 4, rng)])
    frames = [40, 60, 80, 120] * 2
    return SourceBoxes("clip", source_id, "test", vectors, [""] * 8, frames,
                       [(n, 0, 30 + n, 40) for n in range(8)], [0.96 + n / 1000 for n in range(8)], [0] * 8, 4)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> tuple[Snapshot, np.ndarray, list[SourceBoxes]]:
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(2 * PAIRS, DIM))
    sources = ([_item(f"i{k:02d}", centres[k], rng) for k in range(PAIRS)]
               + [_clip(f"c{k:02d}", centres[k], centres[PAIRS + k], rng) for k in range(PAIRS)])
    store = GalleryStore(tmp_path_factory.mktemp("gallery"), DIM, {"test": 1})
    return store.replace_all(sources), centres, sources


def _batch_answer(sources: list[SourceBoxes], query: SourceBoxes, rules: VoteRules) -> dict | None:
    """What run.sh decides for the query's source on the gallery with the query in its entry's place."""
    entries = [s for s in sources if (s.kind, s.source_id) != (query.kind, query.source_id)] + [query]
    rows, vectors = [], []
    for s in entries:
        for name, frame, box, score in zip(s.names, s.frames, s.boxes, s.scores):
            key = "item_id" if s.kind == "item" else "video_id"
            rows.append({"kind": "image" if s.kind == "item" else "video", key: s.source_id,
                         "file": f"{name}.jpg", "frame": None if frame < 0 else frame, "box": list(box),
                         "score": score})
        vectors.append(s.vectors)
    result = match_embeddings(np.concatenate(vectors), rows, MatchConfig(vote=rules), "cpu").pairs
    side = (lambda c: c.item_id) if query.kind == "item" else (lambda c: c.video_id)
    return next(({"item_id": c.item_id, "video_id": c.video_id, "img_name": c.img_name,
                  "item_box": list(c.item_box), "frame_index": c.frame_index, "frame_box": list(c.frame_box)}
                 for c in result if side(c) == query.source_id), None)


@pytest.mark.parametrize("rules", [VoteRules(assignment="hungarian"), VoteRules(assignment="greedy"),
                                   VoteRules(assignment="hungarian", direction="clip_to_shop")],
                         ids=["hungarian", "greedy", "clip_to_shop"])
@pytest.mark.parametrize("kind,source_id,garment", [
    ("clip", "c03", 3), ("clip", "c07", 5), ("clip", "cnew", 4), ("clip", "c02", None),
    ("item", "i03", 3), ("item", "inew", 6), ("item", "i08", 1)])
def test_query_answer_equals_the_batch_matcher(gallery, rules: VoteRules, kind: str, source_id: str,
                                               garment: int | None) -> None:
    snapshot, centres, sources = gallery
    rng = np.random.default_rng(hash((kind, source_id)) % 2**32)
    if kind == "clip":  # c07 sent with item 5's garment, c02 with garments not in the gallery at all
        centre = centres[garment] if garment is not None else rng.normal(size=DIM)
        query = _clip(source_id, centre, rng.normal(size=DIM), rng)
    else:
        query = _item(source_id, centres[garment], rng)
    answer = GalleryMatcher(rules).match(query, snapshot)
    expected = _batch_answer(sources, query, rules)
    got = None if answer["match"] is None else {k: answer["match"][k] for k in expected or {}}
    assert got == expected, answer["reason"]


@pytest.mark.parametrize("rules", [VoteRules(assignment="hungarian"),
                                   VoteRules(assignment="hungarian", direction="clip_to_shop")],
                         ids=["shop_to_clip", "clip_to_shop"])
def test_votes_derived_from_the_last_generation_equal_votes_from_scratch(tmp_path: Path, rules: VoteRules) -> None:
    rng = np.random.default_rng(8)
    centres = rng.normal(size=(2 * PAIRS, DIM))
    store = GalleryStore(tmp_path, DIM, {"test": 1})
    matcher = GalleryMatcher(rules)  # keeps the last generation's votes and derives the next from them
    changes = [
        lambda: store.put([_item(f"i{k:02d}", centres[k], rng) for k in range(6)]),  # items, no clip yet
        lambda: store.put([_clip(f"c{k:02d}", centres[k], centres[PAIRS + k], rng) for k in range(8)]),
        lambda: store.put([_item(f"i{k:02d}", centres[k], rng) for k in range(6, PAIRS)]),
        lambda: store.put([_clip("c03", centres[9], centres[PAIRS], rng)]),  # replaced: another garment
        lambda: store.delete("clip", "c05"),
        lambda: store.delete("item", "i09"),
        lambda: store.put([_clip("c20", centres[5], centres[PAIRS + 1], rng), _item("i99", centres[3], rng)]),
        lambda: store.replace_all([_item("i01", centres[1], rng), _clip("c01", centres[1], centres[PAIRS], rng)]),
    ]
    for change in changes:
        change()
        snapshot = store.snapshot
        derived = matcher.gallery_votes(snapshot)
        scratch = GalleryMatcher(rules)._votes(snapshot)
        np.testing.assert_array_equal(derived.rows, scratch.rows)
        np.testing.assert_allclose(derived.distances, scratch.distances, atol=1e-5)

        def pairs(votes) -> list[tuple]:
            return sorted((c.video_id, c.item_id, c.img_name, c.item_box, c.frame_index, c.frame_box, c.votes,
                           round(c.distance, 4)) for c in votes.candidates)

        assert pairs(derived) == pairs(scratch)
        assert len(scratch.candidates) > 0 or snapshot.generation == 1
