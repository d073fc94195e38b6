"""One query matched against the gallery: the pair ``run.sh`` would write for it.

What a query is matched against reproduces ``run.sh`` on the gallery plus
the query: the query takes the place of a gallery entry with the same kind
and id, every indexed item and clip votes as in the batch run (the
gallery's own votes are computed once per gallery generation), and the
one-to-one assignment and the cutoff decide. So a folder or clip of a
dataset whose other items and clips are indexed gets the pair ``run.sh``
writes for it.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from metric_sub.index import GalleryIndex
from metric_sub.vote import BoxTable, Candidate, Retrievals, VoteRules, resolve, vote_all
from service.gallery import Kind, Side, Snapshot, SourceBoxes

if TYPE_CHECKING:
    import torch


def _local_targets(targets: BoxTable, query: SourceBoxes, rows: np.ndarray) -> tuple[BoxTable, np.ndarray]:
    """The target boxes a re-vote can read, as a small table, and ``rows`` renumbered into it.

    Rows at or past ``len(targets)`` are the query's boxes. A vote reads
    every box of each target its group's boxes retrieved (``boxes: nearest``
    looks at all of a target's boxes) and nothing else, so copying only
    those keeps a query's cost independent of the gallery's size. The entry
    the query replaces is never retrieved, so the query's id names the
    query's boxes alone, as in a batch run without that entry.
    """
    found = rows[(rows >= 0) & (rows < len(targets))]
    sources = np.unique(targets.source[found])
    kept = _rows_of(targets, sources)
    table = BoxTable.join([targets.take(kept), query.table()])
    local = np.where(rows >= len(targets), rows - len(targets) + len(kept), np.searchsorted(kept, rows))
    return table, np.where(rows >= 0, local, -1)


def _rows_of(table: BoxTable, sources: Iterable[str]) -> np.ndarray:
    """The rows of the given sources, ascending."""
    return np.sort(np.concatenate([table.rows_of[str(s)] for s in sources] or [np.zeros(0, np.int64)]))


def _voters(groups: BoxTable, changed: set[str], rows: np.ndarray) -> np.ndarray:
    """The rows of the changed groups whose box found a target: what votes again."""
    voters = _rows_of(groups, changed)
    return voters[rows[voters] >= 0]


def _take_nearer(distances: np.ndarray, rows: np.ndarray, queries: np.ndarray, vectors: np.ndarray,
                 ids: np.ndarray, device: torch.device, among: np.ndarray | None = None) -> np.ndarray:
    """Where one of ``vectors`` (with row ``ids``) is nearer to a query than its current nearest, among the
    masked queries (default: all, searched without copying them), take it (in place); returns the mask of
    queries that changed."""
    fresh = GalleryIndex(vectors.shape[1], device=device)
    fresh.add(vectors, ids)
    near, found = _nearest(fresh, queries if among is None else queries[among])
    closer = np.zeros(len(queries), bool)
    where = slice(None) if among is None else among
    closer[where] = near < distances[where]
    distances[closer], rows[closer] = near[closer[where]], found[closer[where]]
    return closer


def _retrievals(distances: np.ndarray, rows: np.ndarray) -> Retrievals:
    ok = rows >= 0
    return Retrievals(np.flatnonzero(ok), rows[ok], distances[ok].astype(np.float64))


def _nearest(index: GalleryIndex, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distances, rows = index.search(vectors, 1)
    return distances[:, 0].astype(np.float64), rows[:, 0]


def _nearest_excluding(index: GalleryIndex, vectors: np.ndarray, excluded: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Each vector's nearest row not in ``excluded``: among its ``len(excluded) + 1`` nearest, one always is."""
    distances, rows = index.search(vectors, len(excluded) + 1)
    allowed = (rows >= 0) & ~np.isin(rows, excluded)
    picked = np.arange(len(rows)), np.argmax(allowed, axis=1)
    found = allowed[picked]
    return (np.where(found, distances[picked], np.inf).astype(np.float64), np.where(found, rows[picked], -1))


def _lookup(known: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``ids``: whether the ascending ``known`` holds it, and at which position (0 where not)."""
    if not len(known):
        return np.zeros(len(ids), bool), np.zeros(len(ids), np.int64)
    position = np.minimum(np.searchsorted(known, ids), len(known) - 1)
    found = known[position] == ids
    return found, np.where(found, position, 0)


def pair_json(c: Candidate) -> dict[str, Any]:
    return {"item_id": c.item_id, "video_id": c.video_id, "img_name": c.img_name, "item_box": list(c.item_box),
            "frame_index": c.frame_index, "frame_box": list(c.frame_box), "distance": round(c.distance, 6),
            "votes": c.votes}


@dataclass(frozen=True)
class GalleryVotes:
    """The indexed entries of one generation voting among themselves: each group box's nearest target
    (distance and target row) and the candidate pairs, with the persistent box ids of both sides' rows, which
    let the next generation's votes be derived from these (``GalleryMatcher.gallery_votes``)."""

    generation: int
    distances: np.ndarray
    rows: np.ndarray
    candidates: list[Candidate]
    group_box_ids: np.ndarray
    target_box_ids: np.ndarray


class GalleryMatcher:
    """The voting rules applied to a query and a gallery snapshot."""

    def __init__(self, rules: VoteRules) -> None:
        self.rules = rules
        self._cache_key = ("votes", rules.model_dump_json())
        self._last: GalleryVotes | None = None
        """The newest generation's votes computed so far, the base the next generation's are derived from."""
        self._last_lock = threading.Lock()

    @property
    def group_kind(self) -> Kind:
        """The side whose entries vote (items in the seed's direction)."""
        return "item" if self.rules.direction == "shop_to_clip" else "clip"

    def _sides(self, snapshot: Snapshot) -> tuple[Side, Side]:
        """The voting side (groups) and the searched side (targets) of a snapshot."""
        return snapshot.sides[self.group_kind], snapshot.sides["clip" if self.group_kind == "item" else "item"]

    def gallery_votes(self, snapshot: Snapshot) -> GalleryVotes:
        """The snapshot's entries voting among themselves under these rules, computed once per snapshot.

        Derived from the last generation this matcher voted when there is one
        (``_votes_since``), else from scratch: the full vote searches every
        group box against the whole gallery.
        """
        with snapshot.cache_lock:
            if self._cache_key not in snapshot.cache:
                last = self._last
                votes = self._votes_since(last, snapshot) if last is not None else self._votes(snapshot)
                snapshot.cache[self._cache_key] = votes
                with self._last_lock:
                    if self._last is None or self._last.generation < votes.generation:
                        self._last = votes
            return snapshot.cache[self._cache_key]

    def _votes(self, snapshot: Snapshot) -> GalleryVotes:
        groups, targets = self._sides(snapshot)
        distances, rows = _nearest(targets.index, groups.index.vectors)
        candidates, _ = vote_all(_retrievals(distances, rows), groups.table, targets.table, self.rules)
        return GalleryVotes(snapshot.generation, distances, rows, candidates, groups.box_ids, targets.box_ids)

    def _votes_since(self, last: GalleryVotes, snapshot: Snapshot) -> GalleryVotes:
        """This snapshot's votes from another generation's, touching only what differs between the two.

        Entries are replaced whole, so box ids tell what changed. A group box
        kept from ``last`` keeps its nearest target unless that box is gone
        (searched again) or a new target box is nearer (one search of the kept
        group boxes against the new target boxes alone); new group boxes are
        searched in full. Only groups with a changed box vote again; the
        others keep their candidates, which name ids and boxes, not rows.
        """
        groups, targets = self._sides(snapshot)
        kept, old_row = _lookup(last.group_box_ids, groups.box_ids)
        kept[kept] = last.rows[old_row[kept]] >= 0
        target_ids = np.full(len(groups), -1, np.int64)
        target_ids[kept] = last.target_box_ids[last.rows[old_row[kept]]]
        still, target_row = _lookup(targets.box_ids, target_ids)
        still &= kept
        distances = np.full(len(groups), np.inf)
        rows = np.full(len(groups), -1, np.int64)
        distances[still], rows[still] = last.distances[old_row[still]], target_row[still]
        redo = ~still
        if redo.any():
            distances[redo], rows[redo] = _nearest(targets.index, groups.index.vectors[redo])
        new_targets = np.flatnonzero(~_lookup(last.target_box_ids, targets.box_ids)[0])
        if len(new_targets) and still.any():
            redo |= _take_nearer(distances, rows, groups.index.vectors, targets.index.vectors[new_targets],
                                 new_targets, targets.index.device, among=still)
        again = set(groups.table.source[redo])
        voters = _voters(groups.table, again, rows)
        revoted, _ = vote_all(Retrievals(voters, rows[voters], distances[voters]), groups.table, targets.table,
                              self.rules)
        present = set(groups.table.source)
        candidates = [c for c in last.candidates
                      if self._group_of(c) in present and self._group_of(c) not in again] + revoted
        return GalleryVotes(snapshot.generation, distances, rows, candidates, groups.box_ids, targets.box_ids)

    def has_votes(self, snapshot: Snapshot) -> bool:
        """Whether ``gallery_votes`` of this snapshot is already computed (a match will not wait for it)."""
        return self._cache_key in snapshot.cache

    def _group_of(self, c: Candidate) -> str:
        return c.item_id if self.group_kind == "item" else c.video_id

    def _target_of(self, c: Candidate) -> str:
        return c.video_id if self.group_kind == "item" else c.item_id

    def match(self, query: SourceBoxes, snapshot: Snapshot) -> dict[str, Any]:
        """The answer for one query against the gallery (CPU work; call it in a thread)."""
        groups, targets = self._sides(snapshot)
        base = self.gallery_votes(snapshot)
        abstained: dict[str, str] = {}
        if query.kind == self.group_kind:
            distances, rows = _nearest(targets.index, query.vectors)
            mine, abstained = vote_all(_retrievals(distances, rows), query.table(), targets.table, self.rules)
            candidates = [c for c in base.candidates if self._group_of(c) != query.source_id] + mine
            involved = [c for c in candidates if self._group_of(c) == query.source_id]
        else:
            distances, rows = self._retrieved_with(query, groups, targets, base)
            # Only groups with a box whose nearest target changed can vote otherwise than the gallery did.
            again = set(groups.table.source[(distances != base.distances) | (rows != base.rows)])
            voters = _voters(groups.table, again, rows)
            table, local = _local_targets(targets.table, query, rows[voters])
            revoted, _ = vote_all(Retrievals(voters, local, distances[voters]), groups.table, table, self.rules)
            candidates = [c for c in base.candidates if self._group_of(c) not in again] + revoted
            involved = [c for c in candidates if self._target_of(c) == query.source_id]
        kept, dropped = resolve(candidates, self.rules)
        side = (lambda c: c.item_id) if query.kind == "item" else (lambda c: c.video_id)
        match = next((c for c in kept if side(c) == query.source_id), None)
        listed = [{**pair_json(c), "kept": c in kept, "why": dropped.get((c.video_id, c.item_id), "")}
                  for c in sorted(involved, key=lambda c: c.distance)]
        return {"match": pair_json(match) if match else None,
                "reason": self._reason(query, match, abstained, listed),
                "candidates": listed}

    def _retrieved_with(self, query: SourceBoxes, groups: Side, targets: Side, base: GalleryVotes
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Every group box's nearest target once ``query`` takes the place of the indexed target with its id.

        Only two kinds of box can change their nearest: those whose nearest
        was a box of the replaced entry (searched again, skipping its rows)
        and those now nearer to one of the query's boxes (one small search of
        every group box against the query's own). Query rows follow the
        gallery's in the combined table.
        """
        distances, rows = base.distances.copy(), base.rows.copy()
        replaced = np.flatnonzero(targets.table.source == query.source_id)
        stale = np.isin(rows, replaced)
        if stale.any():
            distances[stale], rows[stale] = _nearest_excluding(targets.index, groups.index.vectors[stale], replaced)
        if len(query.boxes):
            _take_nearer(distances, rows, groups.index.vectors, query.vectors,
                         len(targets) + np.arange(len(query.boxes)), targets.index.device)
        return distances, rows

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

