"""From embedded boxes to result.json: search the gallery, vote, assign one item per clip, cut off.

Public API::

    config = load_match_config()                       # metric_sub/config/match.yaml, --set style overrides
    result = match_embeddings(embeddings, rows, config, device="auto", clips=None)
    result.result     # the result.json mapping; result.decisions: every clip -> what happened and why

The search is the expensive part and does not depend on the voting numbers,
so it is split out: ``retrieve`` once, then ``decide`` with as many
``VoteRules`` as wanted (``metric_sub.calibrate`` does that).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dataset.config import StrictModel, load_config
from metric_sub.config import CONFIG_DIR
from metric_sub.index import GalleryIndex, IndexConfig
from metric_sub.vote import BoxTable, Candidate, Retrievals, VoteRules, resolve, to_result, vote_all

DEFAULT_CONFIG = CONFIG_DIR / "match.yaml"


class MatchConfig(StrictModel):
    """The matcher's settings: the voting rules and the gallery search."""

    vote: VoteRules = VoteRules()
    index: IndexConfig = IndexConfig()


def load_match_config(path: Path | str | None = None, overrides: list[str] | None = None) -> MatchConfig:
    """``path`` (default ``metric_sub/config/match.yaml``) with ``key.sub=value`` overrides applied."""
    return load_config(MatchConfig, path or DEFAULT_CONFIG, overrides)


def box_table(rows: Sequence[dict], vectors: np.ndarray | None = None) -> BoxTable:
    """The embedding rows of one side (and their vectors) as a ``BoxTable``."""
    return BoxTable(
        source=np.array([str(r["item_id"] if r["kind"] == "image" else r["video_id"]) for r in rows], dtype=object),
        score=np.array([float(r.get("score", 1.0)) for r in rows], np.float64),
        frame=np.array([-1 if r.get("frame") is None else int(r["frame"]) for r in rows], np.int64),
        box=np.array([r["box"] for r in rows], np.int64).reshape(-1, 4),
        name=np.array([Path(r["file"]).stem if r["kind"] == "image" else "" for r in rows], dtype=object),
        vectors=vectors)


@dataclass(frozen=True)
class Retrieved:
    """Both sides' boxes and each query's nearest gallery box, for one direction."""

    direction: str
    queries: BoxTable
    gallery: BoxTable
    retrievals: Retrievals


def retrieve(embeddings: np.ndarray, rows: Sequence[dict], direction: str = "shop_to_clip",
             index_config: IndexConfig | None = None, device: str | torch.device = "auto") -> Retrieved:
    """Split rows into shop and clip boxes and find each query box's nearest gallery box."""
    shop = [i for i, r in enumerate(rows) if r["kind"] == "image"]
    clips = [i for i, r in enumerate(rows) if r["kind"] == "video"]
    query_idx, gallery_idx = (shop, clips) if direction == "shop_to_clip" else (clips, shop)
    queries = box_table([rows[i] for i in query_idx], embeddings[query_idx])
    gallery = box_table([rows[i] for i in gallery_idx], embeddings[gallery_idx])
    if not query_idx or not gallery_idx:
        empty = np.zeros(0, np.int64)
        return Retrieved(direction, queries, gallery, Retrievals(empty, empty, np.zeros(0)))
    index = GalleryIndex(embeddings.shape[1], index_config, device)
    index.add(embeddings[gallery_idx])
    distances, found = index.search(embeddings[query_idx], 1)
    ok = found[:, 0] >= 0
    return Retrieved(direction, queries, gallery,
                     Retrievals(np.flatnonzero(ok), found[ok, 0], distances[ok, 0].astype(np.float64)))


@dataclass
class MatchResult:
    """The result.json mapping, the kept pairs, and for every clip what was decided and why."""

    result: dict[str, dict]
    pairs: list[Candidate]
    decisions: dict[str, str] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def abstained(self) -> dict[str, str]:
        """Clips without a prediction and the reason."""
        return {v: why for v, why in self.decisions.items() if v not in self.result}


def decide(retrieved: Retrieved, rules: VoteRules, clips: Iterable[str] | None = None) -> MatchResult:
    """Vote, assign and cut off; ``clips`` (default: those with boxes) get a decision each."""
    rules = rules.model_copy(update={"direction": retrieved.direction})
    candidates, abstained = vote_all(retrieved.retrievals, retrieved.queries, retrieved.gallery, rules)
    kept, dropped = resolve(candidates, rules)
    clip_side = retrieved.gallery if retrieved.direction == "shop_to_clip" else retrieved.queries
    with_boxes = {str(v) for v in clip_side.source}
    decisions: dict[str, str] = {}
    for video_id in sorted(set(clips) if clips is not None else with_boxes):
        if video_id not in with_boxes:
            decisions[video_id] = "no garment box detected in its sampled frames"
        elif retrieved.direction == "clip_to_shop" and video_id in abstained:
            decisions[video_id] = abstained[video_id]
        else:
            decisions[video_id] = "no item folder voted for it"
    for (video_id, item_id), why in sorted(dropped.items()):
        if video_id in decisions:
            decisions[video_id] = f"item {item_id}: {why}"
    for pair in kept:
        decisions[pair.video_id] = f"matched item {pair.item_id} at distance {pair.distance:.3f}"
    return MatchResult(to_result(kept), kept, decisions, candidates)


def match_embeddings(embeddings: np.ndarray, rows: Sequence[dict], config: MatchConfig | None = None,
                     device: str | torch.device = "auto", clips: Iterable[str] | None = None) -> MatchResult:
    """Embedded shop and clip boxes (``metric_sub.embed`` rows) in, the decided pairs out."""
    config = config or MatchConfig()
    retrieved = retrieve(embeddings, rows, config.vote.direction, config.index, device)
    return decide(retrieved, config.vote, clips)
