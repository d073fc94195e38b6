"""The seed's voting rules, the alternatives and the gallery backends, on hand-made tables."""
from __future__ import annotations

import numpy as np
import pytest

from metric_sub.index import GalleryIndex, IndexConfig
from metric_sub.match import MatchConfig, load_match_config, match_embeddings
from metric_sub.vote import (BoxTable, Candidate, Retrievals, VoteRules, best_box, required_votes, resolve,
                             to_result, vote_all, vote_group)

RULES = VoteRules()


def test_rounding_is_half_to_even_as_the_seed() -> None:
    assert [required_votes(n, 0.5) for n in (1, 2, 3, 4, 5, 7, 9)] == [0, 1, 2, 2, 2, 4, 4]


def test_one_box_and_all_equal_folders_abstain() -> None:
    assert vote_group([0.3], ["a"], RULES).target is None
    equal = vote_group([0.5] * 6, list("abcdef"), RULES)
    assert equal.target is None and "quantile" in equal.reason
    assert vote_group([], [], RULES).target is None


def test_quantile_is_strict_and_interpolated() -> None:
    # np.quantile([0.1, 0.2, 0.3, 0.4, 0.5], 0.28) = 0.212: two boxes survive (0.1, 0.2)
    vote = vote_group([0.1, 0.2, 0.3, 0.4, 0.5], ["a", "b", "a", "a", "a"], RULES)
    assert vote.support.tolist() == [False, True, False, False, False]
    # 2 survivors need round(1.0) = 1 vote: both a and b stay; nearest mean over all boxes: b (0.2) < a (0.325)
    assert set(vote.options) == {"a", "b"} and vote.target == "b"
    # A tie exactly at the threshold does not survive (strict <).
    tied = vote_group([0.1, 0.1, 0.1, 0.9], ["a", "b", "c", "d"], VoteRules(quantile=0.5))
    assert tied.target is None


def test_count_filter_and_nearest_versus_farthest() -> None:
    distances = [0.10, 0.11, 0.12, 0.13, 0.14, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    targets = ["x", "x", "y", "y", "z"] + ["x"] * 13
    rules = VoteRules(quantile=0.28)  # threshold between 0.14 and 0.9: the first five survive
    vote = vote_group(distances, targets, rules)
    # 5 survivors need round(2.5) = 2 votes: x (2) and y (2) stay, z (1) is out
    assert set(vote.options) == {"x", "y"}
    # nearest mean over all boxes of each id: y 0.125 beats x (mostly 0.9)
    assert vote.target == "y"
    assert vote_group(distances, targets, rules.model_copy(update={"multi": "farthest"})).target == "x"
    assert vote.distance == pytest.approx(0.125)


def test_equal_means_go_to_the_smallest_id() -> None:
    vote = vote_group([0.1, 0.1, 0.9, 0.9], ["b", "a", "c", "c"], VoteRules(quantile=0.6))
    assert vote.target == "a"


def _tables() -> tuple[BoxTable, BoxTable]:
    shop = BoxTable(source=np.array(["i1", "i1", "i1", "i1", "i2", "i2", "i2", "i2"], dtype=object),
                    score=np.array([0.9, 0.95, 0.5, 0.5, 0.9, 0.8, 0.5, 0.5]),
                    frame=np.full(8, -1), box=np.arange(32).reshape(8, 4),
                    name=np.array(["0", "1", "2", "3", "0", "1", "2", "3"], dtype=object))
    clips = BoxTable(source=np.array(["v1", "v1", "v2", "v2"], dtype=object),
                     score=np.array([0.99, 0.6, 0.9, 0.7]), frame=np.array([100, 120, 80, 200]),
                     box=np.arange(100, 116).reshape(4, 4), name=np.array(["", "", "", ""], dtype=object))
    return shop, clips


def _retrievals(gallery_rows: list[int], distances: list[float]) -> Retrievals:
    return Retrievals(np.arange(len(gallery_rows)), np.array(gallery_rows), np.array(distances))


def test_boxes_are_the_best_scoring_with_annotated_frames_preferred() -> None:
    shop, clips = _tables()
    retrievals = _retrievals([0, 1, 2, 2, 2, 3, 0, 0], [0.2, 0.3, 0.9, 0.9, 0.2, 0.3, 0.9, 0.9])
    candidates, abstained = vote_all(retrievals, shop, clips, VoteRules(quantile=0.5, boxes="support"))
    by_item = {c.item_id: c for c in candidates}
    assert not abstained
    i1 = by_item["i1"]
    assert (i1.video_id, i1.img_name, i1.item_box) == ("v1", "1", (4, 5, 6, 7))
    # retrieved clip boxes: row 0 (frame 100, score .99) and row 1 (frame 120, score .6): 120 is a multiple of 40
    assert (i1.frame_index, i1.frame_box) == (120, (104, 105, 106, 107))
    seed = vote_all(retrievals, shop, clips, VoteRules(quantile=0.5, frame_step=0, boxes="support"))[0]
    assert {c.item_id: c.frame_index for c in seed}["i1"] == 100
    assert best_box(np.array([0, 1]), clips, 40) == 1


def test_nearest_boxes_come_from_all_boxes_of_the_pair_on_annotated_frames() -> None:
    shop, clips = _tables()
    unit = np.eye(4)
    # i1's box "3" (row 3) looks like v1's box on frame 120 (row 1); the supporting pairs are rows 0/1 -> 0.
    shop_vectors = np.array([unit[0], unit[0], unit[1], unit[2], unit[3], unit[3], unit[3], unit[3]])
    clip_vectors = np.array([unit[0], unit[2], unit[3], unit[3]])
    # a box on frame 100 closer to the shop box than any other does not win: 100 is not annotated
    clips_plus = BoxTable(*(np.concatenate([getattr(clips, f), extra]) for f, extra in (
        ("source", ["v1"]), ("score", [0.99]), ("frame", [100]), ("box", [[1, 2, 3, 4]]), ("name", [""]))),
        vectors=np.concatenate([clip_vectors, [unit[2]]]))
    shop = BoxTable(shop.source, shop.score, shop.frame, shop.box, shop.name, shop_vectors)
    retrievals = _retrievals([0, 0, 2, 2, 2, 3, 0, 0], [0.2, 0.2, 0.9, 0.9, 0.2, 0.3, 0.9, 0.9])
    rules = VoteRules(quantile=0.5)
    by_item = {c.item_id: c for c in vote_all(retrievals, shop, clips_plus, rules)[0]}
    i1 = by_item["i1"]
    assert (i1.video_id, i1.img_name, i1.item_box) == ("v1", "3", (12, 13, 14, 15))
    assert (i1.frame_index, i1.frame_box) == (120, (104, 105, 106, 107))
    assert i1.distance == pytest.approx(0.2)  # the pair's distance is still its voters' mean
    support = {c.item_id: c for c in vote_all(retrievals, shop, clips_plus, rules.model_copy(
        update={"boxes": "support"}))[0]}["i1"]
    assert (support.img_name, support.frame_index) == ("1", 100)  # the seed: best-scoring voters, frame 100 only
    with pytest.raises(ValueError, match="vectors"):
        vote_all(retrievals, shop, clips, rules)


def test_dedup_keeps_the_nearest_folder_per_clip_and_cutoff_drops() -> None:
    pair = dict(img_name="0", item_box=(0, 0, 1, 1), frame_index=0, frame_box=(0, 0, 1, 1), votes=1)
    candidates = [Candidate("v1", "i1", 0.5, **pair), Candidate("v1", "i2", 0.4, **pair),
                  Candidate("v2", "i3", 1.12, **pair), Candidate("v3", "i4", 1.1199, **pair)]
    kept, dropped = resolve(candidates, RULES)
    assert [(c.video_id, c.item_id) for c in kept] == [("v1", "i2"), ("v3", "i4")]
    assert "one-to-one" in dropped[("v1", "i1")] and "cutoff" in dropped[("v2", "i3")]
    result = to_result(kept)
    assert result["v1"] == {"item_id": "i2", "frame_index": 0,
                            "result": [{"img_name": "0", "item_box": [0, 0, 1, 1], "frame_box": [0, 0, 1, 1]}]}


def test_hungarian_reassigns_the_loser_where_greedy_cannot() -> None:
    pair = dict(img_name="0", item_box=(0, 0, 1, 1), frame_index=0, frame_box=(0, 0, 1, 1), votes=1)
    # i1 is near v1 and v2; i2 only near v1. Greedy: v1 <- i2 (0.3), v2 <- i1. Hungarian finds the same sum here,
    # so make the greedy choice strand i2: v1 prefers i1 (0.2), i2 then has nothing.
    candidates = [Candidate("v1", "i1", 0.2, **pair), Candidate("v2", "i1", 0.25, **pair),
                  Candidate("v1", "i2", 0.3, **pair)]
    greedy = resolve(candidates, RULES)[0]
    assert {(c.video_id, c.item_id) for c in greedy} == {("v1", "i1"), ("v2", "i1")}  # one folder twice
    hungarian = resolve(candidates, RULES.model_copy(update={"assignment": "hungarian"}))[0]
    assert {(c.video_id, c.item_id) for c in hungarian} == {("v2", "i1"), ("v1", "i2")}


def _embedded(rng: np.random.Generator, items: int = 5, boxes: int = 6, noise: float = 0.3):
    centres = rng.normal(size=(items, 32))
    vectors, rows = [], []
    for k in range(items):
        item, video = f"{k:06d}", f"{100 + k:06d}"
        for b in range(boxes):
            vectors.append(centres[k] + noise * rng.normal(size=32))
            rows.append({"kind": "image", "item_id": item, "file": f"{b}.jpg", "frame": None,
                         "box": [0, 0, 10 + b, 10], "score": 0.9})
            vectors.append(centres[k] + noise * rng.normal(size=32))
            rows.append({"kind": "video", "video_id": video, "file": f"{video}.mp4", "frame": 40 * b,
                         "box": [1, 1, 9, 9 + b], "score": 0.8})
    vectors = np.array(vectors, np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), rows


@pytest.mark.parametrize("vote", [{}, {"direction": "clip_to_shop"}, {"assignment": "hungarian"},
                                  {"direction": "clip_to_shop", "assignment": "hungarian"}])
def test_every_variant_matches_separable_embeddings(vote: dict) -> None:
    vectors, rows = _embedded(np.random.default_rng(0))
    config = MatchConfig(vote=VoteRules(**vote))
    matched = match_embeddings(vectors, rows, config, "cpu")
    assert {v: e["item_id"] for v, e in matched.result.items()} == {f"{100 + k:06d}": f"{k:06d}" for k in range(5)}
    assert all(e["frame_index"] % 40 == 0 for e in matched.result.values())


def test_bundled_config_holds_the_seed_numbers() -> None:
    config = load_match_config(overrides=["vote.cutoff=1.0"])
    assert (config.vote.quantile, config.vote.vote_share, config.vote.multi) == (0.28, 0.5, "nearest")
    assert config.vote.cutoff == 1.0


def test_exact_backends_agree_and_ivf_recall_is_reported() -> None:
    rng = np.random.default_rng(1)
    gallery, queries = rng.normal(size=(3000, 48)).astype(np.float32), rng.normal(size=(300, 48)).astype(np.float32)
    results = {}
    for backend in ("faiss", "torch"):
        index = GalleryIndex(48, IndexConfig(backend=backend), "cpu")
        index.add(gallery)
        results[backend] = index.search(queries, 5)
    assert np.array_equal(results["faiss"][1], results["torch"][1])
    np.testing.assert_allclose(results["faiss"][0], results["torch"][0], atol=1e-5)
    # Clustered data, as embeddings are: IVF with a few probes finds nearly every exact neighbour.
    centres = rng.normal(size=(30, 48))
    clustered = (centres[rng.integers(0, 30, 3000)] + 0.2 * rng.normal(size=(3000, 48))).astype(np.float32)
    probes = (centres[rng.integers(0, 30, 300)] + 0.2 * rng.normal(size=(300, 48))).astype(np.float32)
    exact = GalleryIndex(48, IndexConfig(), "cpu")
    exact.add(clustered)
    ivf = GalleryIndex(48, IndexConfig(kind="ivf", nlist=32, nprobe=4), "cpu")
    ivf.add(clustered)
    recall = float((ivf.search(probes, 1)[1] == exact.search(probes, 1)[1]).mean())
    print(f"IVF recall@1 vs exact: {recall:.3f}")
    assert recall > 0.9


def test_ivfpq_rerank_returns_exact_distances_and_finds_what_pq_order_misses() -> None:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(400, 64))  # ten boxes per item, as a clip's few boxes of one garment
    gallery = (centres[rng.integers(0, 400, 4000)] + 0.5 * rng.normal(size=(4000, 64))).astype(np.float32)
    probes = (centres[rng.integers(0, 400, 200)] + 0.5 * rng.normal(size=(200, 64))).astype(np.float32)
    exact = GalleryIndex(64, IndexConfig(), "cpu")
    exact.add(gallery)
    truth = exact.search(probes, 1)[1][:, 0]
    recalls = {}
    for rerank in (1, 8):
        index = GalleryIndex(64, IndexConfig(kind="ivfpq", nlist=16, nprobe=16, pq_m=8, rerank=rerank), "cpu")
        index.add(gallery, np.arange(4000) * 3 + 7)  # ids that are not row numbers
        distances, ids = index.search(probes, 3)
        rows = (ids - 7) // 3
        recalls[rerank] = float((rows[:, 0] == truth).mean())
        if rerank > 1:  # re-ranked distances are the exact ones of the ids returned, ascending
            unit = exact.vectors
            expected = 2 - 2 * np.einsum("qd,qkd->qk", probes / np.linalg.norm(probes, axis=1, keepdims=True),
                                         unit[rows])
            np.testing.assert_allclose(distances, np.maximum(expected, 0), atol=1e-5)
            assert (np.diff(distances, axis=1) >= 0).all()
    print(f"ivfpq recall@1 vs exact: PQ order {recalls[1]:.3f}, re-ranked {recalls[8]:.3f}")
    assert recalls[1] < 0.5 and recalls[8] > 0.95


def test_add_remove_save_load(tmp_path) -> None:
    rng = np.random.default_rng(2)
    index = GalleryIndex(16, IndexConfig(backend="torch"), "cpu")
    ids = index.add(rng.normal(size=(10, 16)))
    assert ids.tolist() == list(range(10))
    assert index.add(rng.normal(size=(2, 16))).tolist() == [10, 11]
    query = index.vectors[3:4].copy()
    assert index.search(query, 1)[1][0, 0] == 3
    assert index.remove([3, 99]) == 1
    assert index.search(query, 1)[1][0, 0] != 3
    loaded = GalleryIndex.load(index.save(tmp_path / "g"), "cpu", IndexConfig(backend="faiss"))
    assert np.array_equal(loaded.search(query, 4)[1], index.search(query, 4)[1])
    d, i = GalleryIndex(16, device="cpu").search(query, 2)
    assert np.isinf(d).all() and (i == -1).all()
    with pytest.raises(ValueError):
        index.add(rng.normal(size=(1, 16)), ids=[0])
