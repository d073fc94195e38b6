"""The Milvus gallery backend: the gallery in Milvus collections that several service replicas share.

Collections (prefix ``gallery.collection``)::

    <p>_boxes    one row per box: id (primary), kind, source_id, version, name, frame, x1..y2, score, grp, vector
    <p>_entries  one row per entry version: key "kind/source_id/version" (primary), kind, source_id, version,
                 removed (a tombstone), origin, pictures, boxes, added_at
    <p>_log      one row per committed generation: generation (primary), base, next_id, models, dim, writer

Commit. Milvus has no transaction over several rows, so a change never
overwrites anything: it writes the rows of the new version (boxes and entry
rows stamped ``version = g``, the new generation; a tombstone row per
removed entry), then inserts the log row of generation ``g``. That one
insert is the switch. Readers see rows only through the newest log row (the
head, read at Strong consistency): an entry is the newest row of its key
with ``base <= version <= head``, unless that row is a tombstone (``base``
is the generation of the last ``replace_all``); a box belongs to the gallery
when its (kind, source_id, version) is a live entry's. A killed change's rows
(versions above the head) are never seen and are deleted before the next
change; the rows a change superseded are deleted after its commit (and at a
writer's start, should it have been killed in between). Milvus's own lag in
applying deletes (milvus#50194: deleted rows still returned at Bounded
consistency) cannot bring a box back, because visibility is decided by the
versions, not by deletion.

Readers. Each replica holds the snapshot of the head it last loaded, with
exact in-memory indexes for the voting (the same ``Snapshot`` the local
backend gives, so both answer the same matches). ``current()`` reads the head
(one small query, at ``gallery.consistency``: Strong by default, so a match
after a write through any replica sees it); when the head moved, the replica
loads what changed (every entry row, which is small, and the boxes of the new
versions), then reads the head again and starts over if it moved meanwhile:
a snapshot is always one whole generation. The gallery's own votes are kept
per replica and per generation by the matcher, derived from the replica's
previous ones by box id (ids are global and never reused): a replica learns
that its votes are stale when the head it reads moved, and the service then
re-votes the changes incrementally in the background.

Writers. Exactly one replica per gallery writes (``gallery.writer``; the
compose profile routes gallery changes to it): Milvus offers no conditional
write that could order two writers' commits. A writer re-reads the head
before each change and before its commit and refuses to commit over a head
it did not expect, which catches a second writer in all but a narrow race.
"""
from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metric_sub.index import unit_rows
from runtime.allocator import release_freed_memory
from service.gallery.model import (Entry, GalleryError, GalleryReadOnly, GalleryUnavailable, Kind, Snapshot,
                                   SourceBoxes, change_sides, empty_snapshot, sources_of)

if TYPE_CHECKING:
    from service.settings import GallerySettings

log = logging.getLogger(__name__)

LOG_KEPT = 16
"""Log rows kept below the head (older ones are deleted after each commit)."""
LOAD_ATTEMPTS = 8
"""Loads of a moving head tried before a reader gives up (503): each retry follows a commit made meanwhile."""
INCOMPLETE_WAIT_S = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4)
"""Pauses between reads that found rows of an unmoved head missing: a restarted server serves its segments
as it loads them, so a read just after a restart can come back short."""
INSERT_BYTES = 8 * 2**20
"""Approximate size of one insert call."""
PAGE = 4096
"""Rows per query page when vectors come back (four times as many without)."""
PRIMARY = {"boxes": "id", "entries": "key", "log": "generation"}
MAX_ID_LENGTH = 256
MAX_TEXT = 4096
DUMMY_DIM = 2
"""Milvus collections need a vector field: the entries and log collections carry a constant 2-d one."""
FLUSH_S = 10.0
"""A writer seals what it committed at most this long after a change (see ``MilvusGallery._flush``)."""


@dataclass(frozen=True)
class Head:
    """The newest log row: the committed generation readers see."""

    generation: int = 0
    base: int = 0
    next_id: int = 0
    models: str | None = None
    dim: int | None = None
    writer: str = ""


def _quote(text: str) -> str:
    """A string literal for a Milvus filter expression."""
    return json.dumps(text)


def _key(kind: str, source_id: str, version: int) -> str:
    return f"{kind}/{source_id}/{version}"


def _client_kwargs(config: GallerySettings) -> dict[str, Any]:
    """``MilvusClient`` arguments: the URI, and the credentials when set."""
    kwargs: dict[str, Any] = {"uri": config.uri, "timeout": config.timeout_s}
    if config.db_name:
        kwargs["db_name"] = config.db_name
    if config.token is not None:
        kwargs["token"] = config.token.get_secret_value()
    elif config.user:
        kwargs.update(user=config.user, password=config.password.get_secret_value() if config.password else "")
    return kwargs


class MilvusGallery:
    """The gallery in Milvus (see the module docstring): shared by replicas, one of which writes."""

    backend = "milvus"

    def __init__(self, config: GallerySettings, *, dim: int, models: dict, device: str = "cpu",
                 scratch_dir: Path | str = "service_data", fresh: bool = False) -> None:
        """``scratch_dir`` holds this process's staged uploads; ``fresh`` ignores what is stored (for
        ``replace_all``), as with the local backend: until that commits, the stored gallery stays as it was."""
        from pymilvus import MilvusClient

        self.config = config
        self.dim = dim
        self.models = json.dumps(models, sort_keys=True)
        self.device = device
        self.uploads = Path(scratch_dir) / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.on_change: Callable[[Snapshot], None] | None = None
        """Called with every newly committed or newly loaded snapshot (the service precomputes its votes)."""
        self.writer = uuid.uuid4().hex[:16]
        """This process's writer token, recorded in its log rows."""
        prefix = config.collection
        self.names = {"boxes": f"{prefix}_boxes", "entries": f"{prefix}_entries", "log": f"{prefix}_log"}
        self._build, self._search = config.milvus_index()
        self._lock = threading.Lock()
        """Serialises this process's changes and loads."""
        self._dirty = False
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None
        secrets = [s.get_secret_value() for s in (config.password, config.token) if s is not None]
        self._secrets = [s for s in secrets if s]
        self._client = self._call("connect", lambda: MilvusClient(**_client_kwargs(config)))
        self._recreate = False
        """Set when a fresh gallery's dimension differs from the stored one: ``replace_all`` recreates."""
        self._ensure_collections(fresh)
        head = self._head("Strong")
        if not fresh and head.generation and head.models != self.models:
            raise GalleryError(f"Milvus collection {prefix}: the gallery was built with other models "
                               f"({head.models}); rebuild it (python -m service rebuild)")
        self._versions: dict[tuple[str, str], int] = {}
        """Each entry's version in ``snapshot``."""
        self.snapshot = empty_snapshot(head.generation, dim, device)
        if fresh:
            return
        self._load(head)
        if config.writer:
            self._flush()
            self._collect_garbage(self._head("Strong"))

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one Milvus call; its failure becomes ``GalleryUnavailable`` naming the server, never a secret."""
        from pymilvus.exceptions import MilvusException

        try:
            return fn()
        except MilvusException as exc:
            message = str(getattr(exc, "message", "") or exc)
        except (OSError, TimeoutError) as exc:
            message = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # grpc errors carry no common base class
            if type(exc).__module__.split(".")[0] not in ("grpc", "pymilvus"):
                raise
            message = f"{type(exc).__name__}: {exc}"
        for secret in self._secrets if hasattr(self, "_secrets") else ():
            message = message.replace(secret, "***")
        raise GalleryUnavailable(f"Milvus at {self.config.shown_uri()} ({what}): {message[:300]}") from None

    def _flush(self) -> None:
        """Seal the collections' growing segments into stored files.

        Milvus acknowledges a write once it is in its write-ahead log, and a
        restart replays that log; but the PyPI Milvus standalone 2.3.5 was seen
        to lose rows it had replayed after one crash when killed a second time
        before sealing them (the contract test's double kill). A writer therefore
        seals at its start, and ``FLUSH_S`` after its changes, so that only the
        last seconds' changes rest on the log alone. Best effort: a failure is
        logged and retried after the next change.
        """
        try:
            for name in self.names.values():
                self._call(f"flush {name}", lambda n=name: self._client.flush(n))
            self._dirty = False
        except GalleryUnavailable as exc:
            log.warning("gallery: sealing the Milvus collections failed (%s)", exc)

    def _flush_later(self) -> None:
        """After a commit: seal within ``FLUSH_S``, on a background thread (a change does not wait for it)."""
        self._dirty = True
        if self._flusher is None:
            def run() -> None:
                while not self._closed.wait(FLUSH_S):
                    if self._dirty:
                        self._flush()
            self._flusher = threading.Thread(target=run, name="gallery-flush", daemon=True)
            self._flusher.start()

    def close(self) -> None:
        self._closed.set()
        try:
            self._client.close()
        except Exception:  # closing a channel to a dead server: nothing to do
            pass

    def _schemas(self) -> dict[str, Any]:
        from pymilvus import DataType, MilvusClient

        boxes = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        boxes.add_field("id", DataType.INT64, is_primary=True)
        boxes.add_field("kind", DataType.VARCHAR, max_length=8)
        boxes.add_field("source_id", DataType.VARCHAR, max_length=MAX_ID_LENGTH)
        boxes.add_field("version", DataType.INT64)
        boxes.add_field("name", DataType.VARCHAR, max_length=MAX_ID_LENGTH)
        boxes.add_field("frame", DataType.INT64)
        for coordinate in ("x1", "y1", "x2", "y2"):
            boxes.add_field(coordinate, DataType.INT64)
        boxes.add_field("score", DataType.DOUBLE)
        boxes.add_field("grp", DataType.INT64)
        boxes.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        entries = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        entries.add_field("key", DataType.VARCHAR, is_primary=True, max_length=2 * MAX_ID_LENGTH)
        entries.add_field("kind", DataType.VARCHAR, max_length=8)
        entries.add_field("source_id", DataType.VARCHAR, max_length=MAX_ID_LENGTH)
        entries.add_field("version", DataType.INT64)
        entries.add_field("removed", DataType.BOOL)
        entries.add_field("origin", DataType.VARCHAR, max_length=MAX_TEXT)
        entries.add_field("pictures", DataType.INT64)
        entries.add_field("boxes", DataType.INT64)
        entries.add_field("added_at", DataType.DOUBLE)
        entries.add_field("v", DataType.FLOAT_VECTOR, dim=DUMMY_DIM)
        log_schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        log_schema.add_field("generation", DataType.INT64, is_primary=True)
        log_schema.add_field("base", DataType.INT64)
        log_schema.add_field("next_id", DataType.INT64)
        log_schema.add_field("models", DataType.VARCHAR, max_length=65535)
        log_schema.add_field("dim", DataType.INT64)
        log_schema.add_field("writer", DataType.VARCHAR, max_length=64)
        log_schema.add_field("committed_at", DataType.DOUBLE)
        log_schema.add_field("v", DataType.FLOAT_VECTOR, dim=DUMMY_DIM)
        return {"boxes": boxes, "entries": entries, "log": log_schema}

    def _index_params(self, part: str) -> Any:
        params = self._client.prepare_index_params()
        if part == "boxes":
            params.add_index(field_name="vector", index_type=self.config.index, metric_type="IP",
                             params=self._build)
        else:
            params.add_index(field_name="v", index_type="FLAT", metric_type="L2", params={})
        return params

    def _create(self, part: str) -> None:
        name = self.names[part]
        schema = self._schemas()[part]

        def create() -> None:
            try:
                self._client.create_collection(name, schema=schema, index_params=self._index_params(part),
                                               consistency_level="Strong")
            except Exception:
                if not self._client.has_collection(name):  # another replica created it meanwhile: fine
                    raise
        self._call(f"create {name}", create)

    def _stored_dim(self) -> int:
        described = self._call("describe", lambda: self._client.describe_collection(self.names["boxes"]))
        for field_info in described["fields"]:
            if field_info["name"] == "vector":
                return int(field_info["params"]["dim"])
        raise GalleryError(f"Milvus collection {self.names['boxes']} has no vector field: not a gallery")

    def _ensure_collections(self, fresh: bool) -> None:
        for part, name in self.names.items():
            if not self._call("has_collection", lambda n=name: self._client.has_collection(n)):
                self._create(part)
        stored = self._stored_dim()
        if stored != self.dim:
            if not fresh:
                raise GalleryError(f"Milvus collection {self.names['boxes']} holds vectors of dimension {stored}, "
                                   f"the models give {self.dim}; rebuild it (python -m service rebuild)")
            self._recreate = True
            return
        for name in self.names.values():
            self._call(f"load {name}", lambda n=name: self._client.load_collection(n))

    def _query(self, part: str, expr: str, fields: list[str], consistency: str = "Strong") -> list[dict]:
        """Every row of ``part`` matching ``expr`` (see ``_pages``)."""
        return [row for page in self._pages(part, expr, fields, consistency) for row in page]

    def _pages(self, part: str, expr: str, fields: list[str], consistency: str = "Strong") -> Iterator[list[dict]]:
        """The rows of ``part`` matching ``expr``, a page at a time, paged by primary key (Milvus answers at most
        16384 rows per query, in primary-key order). Each page is its own Strong read: ``_load`` checks the head
        afterwards."""
        primary = PRIMARY[part]
        page = PAGE if "vector" in fields else 4 * PAGE
        after: int | str | None = None
        while True:
            bound = "" if after is None else f" and {primary} > {_quote(after) if isinstance(after, str) else after}"
            batch = self._call(f"query {self.names[part]}", lambda b=bound: self._client.query(
                self.names[part], filter=f"({expr}){b}", output_fields=[primary, *fields], limit=page,
                consistency_level=consistency))
            yield batch
            if len(batch) < page:
                return
            after = max(row[primary] for row in batch)

    def _delete(self, part: str, expr: str) -> None:
        self._call(f"delete from {self.names[part]}", lambda: self._client.delete(self.names[part], filter=expr))

    def _insert(self, part: str, rows: Iterable[dict], row_bytes: int) -> None:
        """Insert ``rows`` in calls of about ``INSERT_BYTES``, taking from the iterable only what one call sends."""
        step = max(1, INSERT_BYTES // row_bytes)
        rows = iter(rows)
        while chunk := list(itertools.islice(rows, step)):
            self._call(f"insert into {self.names[part]}", lambda c=chunk: self._client.insert(self.names[part], c))

    # -- reading ----------------------------------------------------------------------------------------------

    def _head(self, consistency: str) -> Head:
        rows = self._call("read the head", lambda: self._client.query(
            self.names["log"], filter="generation >= 0", consistency_level=consistency,
            output_fields=["generation", "base", "next_id", "models", "dim", "writer"]))
        if not rows:
            return Head()
        top = max(rows, key=lambda r: r["generation"])
        return Head(int(top["generation"]), int(top["base"]), int(top["next_id"]), top["models"], int(top["dim"]),
                    top["writer"])

    def _entry_rows(self, head: Head) -> dict[tuple[str, str], dict]:
        """The newest row of every key at ``head`` (tombstones included), keyed by (kind, source_id)."""
        newest: dict[tuple[str, str], dict] = {}
        rows = self._query("entries", f"version >= {head.base} and version <= {head.generation}",
                           ["kind", "source_id", "version", "removed", "origin", "pictures", "boxes", "added_at"])
        for row in rows:
            key = (row["kind"], row["source_id"])
            if key not in newest or newest[key]["version"] < row["version"]:
                newest[key] = row
        return newest

    def current(self) -> Snapshot:
        """The newest committed generation at ``gallery.consistency``, loaded first when the head moved."""
        head = self._head(self.config.consistency)
        if head.generation <= self.snapshot.generation:  # at Bounded, the head read may lag this process's own
            return self.snapshot
        with self._lock:
            if head.generation > self.snapshot.generation:
                self._load(head)
            return self.snapshot

    def _load(self, head: Head) -> None:
        """Make ``snapshot`` the generation of ``head`` or a newer one; the caller holds ``_lock`` (or owns
        the object). A reload that saw the head move meanwhile starts over, so a snapshot is never a mix."""
        moves, short = 0, 0
        while True:
            try:
                loaded = self._read(head)
            except _Moved:
                loaded = None
            after = self._head("Strong")
            if loaded is not None and after.generation == head.generation:
                snapshot, versions = loaded
                if head.models is not None and head.models != self.models and head.generation:
                    raise GalleryError(f"Milvus collection {self.config.collection}: the gallery was rebuilt "
                                       f"with other models ({head.models}); restart with those models")
                self.snapshot, self._versions = snapshot, versions
                release_freed_memory()  # the pages' Python lists: glibc would keep their heap in this replica
                if self.on_change is not None:
                    self.on_change(snapshot)
                return
            if after.generation != head.generation:
                moves += 1
                if moves >= LOAD_ATTEMPTS:
                    raise GalleryUnavailable(f"Milvus collection {self.config.collection}: the gallery changed "
                                             f"during {LOAD_ATTEMPTS} loads in a row; retry")
            else:  # the head stood still, yet rows of it were missing: the server is still loading them
                if short >= len(INCOMPLETE_WAIT_S):
                    raise GalleryUnavailable(f"Milvus collection {self.config.collection}: generation "
                                             f"{head.generation} came back incomplete in {short + 1} reads "
                                             f"over {sum(INCOMPLETE_WAIT_S):.0f} s; retry")
                time.sleep(INCOMPLETE_WAIT_S[short])
                short += 1
            head = after

    def _read(self, head: Head) -> tuple[Snapshot, dict[tuple[str, str], int]]:
        """The snapshot of ``head``: from ``snapshot`` plus what changed since, or whole after a rebuild."""
        old, versions = self.snapshot, self._versions
        newest = self._entry_rows(head)
        live = {key: row for key, row in newest.items() if not row["removed"]}
        changed = {key for key, row in live.items() if versions.get(key) != row["version"]}
        whole = head.base > old.generation or any(live[key]["version"] <= old.generation for key in changed)
        if whole:
            old, versions, changed = empty_snapshot(0, self.dim, self.device), {}, set(live)
        removed = {key for key in versions if key not in live} | (changed & versions.keys())
        since = head.base - 1 if whole else old.generation
        added = self._sources(changed, live, since, head.generation)
        added.sort(key=lambda pair: int(pair[1][0]) if len(pair[1]) else -1)
        new_ids = np.concatenate([ids for _, ids in added] or [np.zeros(0, np.int64)])
        sides = change_sides(old, None if whole else removed, [s for s, _ in added], new_ids, self.device)
        entries = {key: entry for key, entry in old.entries.items() if key not in removed}
        entries.update({key: Entry(row["kind"], row["source_id"], row["origin"], int(row["pictures"]),
                                   int(row["boxes"]), float(row["added_at"]))
                        for key, row in live.items() if key in changed})
        fresh_versions = {key: v for key, v in versions.items() if key not in removed}
        fresh_versions.update({key: int(live[key]["version"]) for key in changed})
        return Snapshot(head.generation, self.dim, entries, sides), fresh_versions

    def _sources(self, keys: set[tuple[str, str]], live: dict[tuple[str, str], dict], since: int,
                 until: int) -> list[tuple[SourceBoxes, np.ndarray]]:
        """The entries ``keys`` as stored at their live versions (all above ``since``), with their box ids."""
        if not keys:
            return []
        wanted = {(key[0], key[1], int(live[key]["version"])) for key in keys}
        # A page's vectors become one float32 array at once: held as the client's lists of Python floats, a
        # million boxes would take some ten times their size.
        found: dict[tuple[str, str], list[tuple]] = {key: [] for key in keys}
        chunks: list[np.ndarray] = []
        stored = 0
        for page in self._pages("boxes", f"version > {since} and version <= {until}",
                                ["id", "kind", "source_id", "version", "name", "frame", "x1", "y1", "x2", "y2",
                                 "score", "grp", "vector"]):
            kept = [row for row in page if (row["kind"], row["source_id"], row["version"]) in wanted]
            if not kept:
                continue
            chunks.append(np.asarray([row["vector"] for row in kept], np.float32).reshape(-1, self.dim))
            for n, row in enumerate(kept, stored):
                found[(row["kind"], row["source_id"])].append(
                    (int(row["id"]), n, row["name"], int(row["frame"]),
                     (int(row["x1"]), int(row["y1"]), int(row["x2"]), int(row["y2"])), float(row["score"]),
                     int(row["grp"])))
            stored += len(kept)
        vectors = np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
        out = []
        for key, boxes in found.items():
            entry = live[key]
            if len(boxes) != int(entry["boxes"]):
                raise _Moved()
            boxes.sort()
            ids, rows, names, frames, corners, scores, groups = zip(*boxes) if boxes else ((),) * 7
            source = SourceBoxes(key[0], key[1], entry["origin"], vectors[list(rows)],
                                 list(names), list(frames), list(corners), list(scores), list(groups),
                                 int(entry["pictures"]))
            out.append((source, np.asarray(ids, np.int64)))
        return out

    def search(self, kind: Kind, vectors: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Nearest boxes of one kind by Milvus's index (``gallery.index``): squared L2 distances and box ids.

        Milvus may still return rows a change superseded or deleted (at
        Bounded consistency, or before its deletes are applied); only boxes of
        the current snapshot are kept, so a deleted box never comes back.
        """
        snapshot = self.current()
        live = snapshot.sides[kind].box_ids
        queries = unit_rows(np.asarray(vectors, np.float32).reshape(-1, self.dim))
        distances = np.full((len(queries), k), np.inf, np.float32)
        found = np.full((len(queries), k), -1, np.int64)
        if not len(queries) or not len(live):
            return distances, found
        limit = min(16384, 2 * k + 16)
        hits = self._call("search", lambda: self._client.search(
            self.names["boxes"], data=queries.tolist(), limit=limit, consistency_level=self.config.consistency,
            filter=f"kind == {_quote(kind)} and version <= {snapshot.generation}",
            search_params={"metric_type": "IP", "params": self._search}, output_fields=["id"]))
        for n, row in enumerate(hits):
            ids = np.asarray([h["id"] for h in row], np.int64)
            scores = np.asarray([h["distance"] for h in row], np.float32)
            kept = np.isin(ids, live)
            ids, scores = ids[kept][:k], scores[kept][:k]
            distances[n, :len(ids)] = np.maximum(2.0 - 2.0 * scores, 0.0)
            found[n, :len(ids)] = ids
        return distances, found

    def export(self) -> Iterator[SourceBoxes]:
        """Every entry as the ``SourceBoxes`` that would add it again (for ``python -m service migrate``)."""
        snapshot = self.current()
        ids = {int(i) for side in snapshot.sides.values() for i in side.box_ids}
        rows = self._query("boxes", f"version <= {snapshot.generation}", ["id", "grp"])
        groups = {int(r["id"]): int(r["grp"]) for r in rows if int(r["id"]) in ids}
        return sources_of(snapshot, groups)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "location": self.config.collection, "segments": 0}

    def settle(self, timeout_s: float = 3600.0) -> float:
        """Seal what was inserted and wait until the vector index covers every row; returns the seconds waited.

        Milvus searches rows not yet indexed by brute force: a benchmark of
        the index's recall and speed must wait for it. Serving never needs to.
        """
        started = time.monotonic()
        name = self.names["boxes"]
        self._call("flush", lambda: self._client.flush(name))
        while time.monotonic() - started < timeout_s:
            index = (self._call("list_indexes", lambda: self._client.list_indexes(name)) or ["vector"])[0]
            info = self._call("describe_index", lambda: self._client.describe_index(name, index))
            if int(info.get("pending_index_rows", 0)) == 0 and \
                    int(info.get("indexed_rows", 0)) >= int(info.get("total_rows", 0)):
                return time.monotonic() - started
            time.sleep(1.0)
        raise GalleryUnavailable(f"Milvus collection {name}: the index was not built within {timeout_s:.0f} s")

    @staticmethod
    def stored_identity(config: GallerySettings) -> tuple[int, dict] | None:
        """The vector dimension and models the gallery in Milvus was built with; ``None`` when it holds none."""
        from pymilvus import MilvusClient

        client = MilvusClient(**_client_kwargs(config))
        try:
            name = f"{config.collection}_log"
            if not client.has_collection(name):
                return None
            rows = client.query(name, filter="generation >= 0", output_fields=["generation", "dim", "models"],
                                consistency_level="Strong")
        finally:
            client.close()
        if not rows:
            return None
        top = max(rows, key=lambda r: r["generation"])
        return int(top["dim"]), json.loads(top["models"])

    # -- writing ----------------------------------------------------------------------------------------------

    def put(self, sources: list[SourceBoxes]) -> Snapshot:
        """Add entries, replacing any with the same kind and id, in one atomic change."""
        return self.upsert(sources)[0]

    def upsert(self, sources: list[SourceBoxes]) -> tuple[Snapshot, set[tuple[str, str]]]:
        """``put``, and which of the keys it replaced (decided against the head the change commits over)."""
        keys = {(s.kind, s.source_id) for s in sources}
        self._check_writer()
        with self._lock:
            self._catch_up()
            replaced = keys & self.snapshot.entries.keys()
            return self._change(keys, sources), replaced

    def delete(self, kind: Kind, source_id: str) -> Entry:
        """Remove one entry; ``KeyError`` when it is not in the gallery."""
        self._check_writer()
        with self._lock:
            self._catch_up()
            entry = self.snapshot.entries.get((kind, source_id))
            if entry is None:
                raise KeyError((kind, source_id))
            self._change({(kind, source_id)}, [])
        return entry

    def replace_all(self, sources: list[SourceBoxes]) -> Snapshot:
        """Make the gallery exactly ``sources`` (a rebuild), in one atomic change."""
        self._check_writer()
        with self._lock:
            if self._recreate:
                self._recreate_collections(self._head("Strong"))
            head = self._head("Strong")
            self.snapshot = empty_snapshot(head.generation, self.dim, self.device)
            self._versions = {}
            return self._change(None, sources, head)

    def _recreate_collections(self, prior: Head) -> None:
        """A rebuild with models of another dimension: the collections are made anew (not atomic: readers
        see an empty gallery until the rebuild commits). Generations and box ids go on from ``prior``'s, so
        that no replica mistakes the new gallery for an older generation of the old one."""
        log.warning("gallery: recreating Milvus collections %s_* for vectors of dimension %d",
                    self.config.collection, self.dim)
        for part, name in self.names.items():
            self._call(f"drop {name}", lambda n=name: self._client.drop_collection(n))
            self._create(part)
        self._insert("log", [self._log_row(prior.generation, prior.generation + 1, prior.next_id, time.time())],
                     600)
        self._recreate = False

    def _log_row(self, generation: int, base: int, next_id: int, now: float) -> dict:
        return {"generation": generation, "base": base, "next_id": int(next_id), "models": self.models,
                "dim": self.dim, "writer": self.writer, "committed_at": now, "v": [0.0] * DUMMY_DIM}

    def _catch_up(self) -> None:
        """Load the head before deciding a change: another process may have committed (a restarted writer's
        predecessor, or a second writer against the rules)."""
        head = self._head("Strong")
        if head.generation != self.snapshot.generation:
            if head.writer and head.writer != self.writer:
                log.warning("gallery: generation %d was committed by another writer", head.generation)
            self._load(head)

    def _check_writer(self) -> None:
        if not self.config.writer:
            raise GalleryReadOnly("this replica does not change the gallery (gallery.writer is false): send "
                                  "gallery changes to the writer replica")

    def _change(self, removed: set[tuple[str, str]] | None, added: list[SourceBoxes],
                head: Head | None = None) -> Snapshot:
        """One atomic change (see the module docstring); the caller holds ``_lock``."""
        self._check_writer()
        head = head or self._head("Strong")
        old = self.snapshot
        if head.generation != old.generation:
            raise GalleryError("the gallery changed while a change was prepared: retry it")
        generation = head.generation + 1
        self._delete("boxes", f"version > {head.generation}")  # a killed change's rows
        self._delete("entries", f"version > {head.generation}")
        count = sum(len(s.boxes) for s in added)
        new_ids = np.arange(head.next_id, head.next_id + count, dtype=np.int64)
        sides = change_sides(old, removed, added, new_ids, self.device)  # in memory first: nothing written yet
        now = time.time()
        self._insert("boxes", self._box_rows(added, new_ids, generation), 4 * self.dim + 160)
        entry_rows = [self._entry_row(s.kind, s.source_id, generation, now, source=s) for s in added]
        added_keys = {(s.kind, s.source_id) for s in added}
        gone = set() if removed is None else {key for key in removed if key in old.entries} - added_keys
        entry_rows += [self._entry_row(kind, source_id, generation, now) for kind, source_id in gone]
        self._insert("entries", entry_rows, 400)
        if self._head("Strong").generation != head.generation:
            raise GalleryError("another writer committed to the gallery during this change; only one replica "
                               "may write (gallery.writer)")
        base = generation if removed is None else head.base
        self._insert("log", [self._log_row(generation, base, head.next_id + count, now)], 600)
        # Committed: the rest only tidies up.
        entries = {} if removed is None else {k: e for k, e in old.entries.items() if k not in removed}
        entries.update({(s.kind, s.source_id): Entry(s.kind, s.source_id, s.origin, s.pictures, len(s.boxes), now)
                        for s in added})
        versions = {} if removed is None else {k: v for k, v in self._versions.items() if k not in removed}
        versions.update({key: generation for key in added_keys})
        self.snapshot, self._versions = Snapshot(generation, self.dim, entries, sides), versions
        if self.on_change is not None:
            self.on_change(self.snapshot)
        self._flush_later()
        self._tidy(generation, None if removed is None else (removed & old.entries.keys()), bool(gone))
        return self.snapshot

    def _box_rows(self, added: list[SourceBoxes], ids: np.ndarray, version: int) -> Iterator[dict]:
        """The boxes' rows, made as they are inserted: a vector as the client's list of Python floats takes
        some ten times its size."""
        position = 0
        for source in added:
            vectors = unit_rows(np.asarray(source.vectors, np.float32).reshape(-1, self.dim)) if len(source.boxes) \
                else np.zeros((0, self.dim), np.float32)
            for n, (name, frame, box, score, group) in enumerate(
                    zip(source.names, source.frames, source.boxes, source.scores, source.groups)):
                x1, y1, x2, y2 = (int(v) for v in box)
                yield {"id": int(ids[position + n]), "kind": source.kind, "source_id": source.source_id,
                       "version": version, "name": str(name), "frame": int(frame), "x1": x1, "y1": y1,
                       "x2": x2, "y2": y2, "score": float(score), "grp": int(group), "vector": vectors[n].tolist()}
            position += len(source.boxes)

    def _entry_row(self, kind: str, source_id: str, version: int, now: float,
                   source: SourceBoxes | None = None) -> dict:
        """An entry's row at ``version``, or its tombstone when ``source`` is ``None``."""
        if len(source_id) > MAX_ID_LENGTH:
            raise GalleryError(f"id {source_id[:40]!r}...: over {MAX_ID_LENGTH} characters")
        return {"key": _key(kind, source_id, version), "kind": kind, "source_id": source_id, "version": version,
                "removed": source is None, "origin": source.origin[:MAX_TEXT] if source else "",
                "pictures": source.pictures if source else 0, "boxes": len(source.boxes) if source else 0,
                "added_at": now, "v": [0.0] * DUMMY_DIM}

    def _tidy(self, generation: int, superseded: set[tuple[str, str]] | None, tombstones: bool) -> None:
        """Delete what the commit of ``generation`` made invisible (``None``: everything older). Best effort:
        what a failure here leaves is invisible and goes at the next writer's start."""
        try:
            if superseded is None:
                self._delete("boxes", f"version < {generation}")
                self._delete("entries", f"version < {generation}")
            else:
                self._delete_versions_below(superseded, generation)
                if tombstones:
                    self._delete("entries", f"version == {generation} and removed == true")
            self._delete("log", f"generation < {generation - LOG_KEPT}")
        except GalleryUnavailable as exc:
            log.warning("gallery: tidying after generation %d failed (%s); the next writer start retries",
                        generation, exc)

    def _delete_versions_below(self, keys: set[tuple[str, str]], below: int | dict) -> None:
        """Delete the rows of ``keys`` whose version is under ``below`` (one bound, or one per key)."""
        if isinstance(below, int):
            by_kind: dict[tuple[str, int], list[str]] = {}
            for kind, source_id in keys:
                by_kind.setdefault((kind, below), []).append(source_id)
        else:
            by_kind = {}
            for (kind, source_id), version in below.items():
                by_kind.setdefault((kind, version), []).append(source_id)
        for (kind, version), ids in by_kind.items():
            for start in range(0, len(ids), 256):
                chunk = sorted(ids[start:start + 256])
                expr = f"kind == {_quote(kind)} and source_id in {json.dumps(chunk)} and version < {version}"
                self._delete("boxes", expr)
                self._delete("entries", expr)

    def _collect_garbage(self, head: Head) -> None:
        """At a writer's start: delete what killed changes left (rows above the head, superseded rows, spent
        tombstones). Every such row is invisible already; this only frees the space."""
        with self._lock:
            self._delete("boxes", f"version > {head.generation} or version < {head.base}")
            self._delete("entries", f"version > {head.generation} or version < {head.base}")
            rows = self._query("entries", f"version <= {head.generation}", ["kind", "source_id", "version",
                                                                             "removed"])
            newest: dict[tuple[str, str], dict] = {}
            counts: dict[tuple[str, str], int] = {}
            for row in rows:
                key = (row["kind"], row["source_id"])
                counts[key] = counts.get(key, 0) + 1
                if key not in newest or newest[key]["version"] < row["version"]:
                    newest[key] = row
            stale = {key: int(row["version"]) for key, row in newest.items() if counts[key] > 1}
            if stale:
                self._delete_versions_below(set(stale), stale)
            spent = [row for row in newest.values() if row["removed"]]
            for start in range(0, len(spent), 256):
                keys = [_key(r["kind"], r["source_id"], r["version"]) for r in spent[start:start + 256]]
                self._delete("entries", f"key in {json.dumps(keys)}")


class _Moved(Exception):
    """Rows of a version disappeared between two reads: the head moved (a later commit tidied them)."""
