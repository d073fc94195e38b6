"""Matching latency of the REST service per query, against galleries of growing size, without the models.

Run from the repository root::

    python -m bench.service_match [--pairs 250,1000,4000] [--dim 512] [--queries 20]

Detection and embedding cost the same whatever the gallery holds (see
``bench/service_load.py`` for whole requests); what grows with the gallery
is the matching of one query's vectors against it, measured here on the
service's own code (``service.gallery.GalleryStore``, ``service.matcher``).
The gallery holds ``P`` item folders (5 images, 2 boxes each) and ``P``
clips (16 frames, 3 boxes each: the item's garment and two others), item
``k`` on sale in clip ``k``, the clips' other garments from a pool of as
many garments not on sale; vectors are clustered as in ``bench/index.py``.
Four kinds of query, each ``--queries`` times (median latency):

* ``clip new`` / ``item new``: a clip or folder the gallery does not hold;
* ``clip indexed`` / ``item indexed``: one with the id of an indexed entry,
  which it replaces for the vote (a dataset's own clip sent back).

``gallery_votes_s`` is the cost of the gallery voting against itself from
scratch (a fresh service, once). Two more rows time gallery changes
(``--changes`` each): ``add clip`` / ``add item`` commit one new entry
(``commit_p50_ms`` / ``commit_max_ms``: its segment file written and synced,
merged with the small trailing segments when due, the metadata committed, the
snapshot rebuilt in memory) and derive the new generation's votes from the
last (``p50_ms``), which the service does in the background after every
change. ``right`` is the share
of queries matched to the item or clip they were drawn from. A new query
shows a garment that an indexed entry shows too, so the one-to-one
assignment gives the partner to one of the two and ``right`` stays well
under 1; an indexed one replaces its entry and should always be right.

``--backend local,milvus`` instead compares the gallery backends side by
side, on galleries of ``--vectors`` box vectors (the same generated
sources for each backend; ``bench/results/service_match_backends.json``):
``load_s`` to commit the whole gallery (``replace_all``), ``index_s`` for
Milvus to seal it and build its index, ``match`` one new clip matched with
the gallery's newest generation read first (for Milvus a Strong read of
its head), ``search`` one box's 10 nearest clip boxes through the backend's
``search`` (the local store's exact FAISS search, Milvus's index) with
``recall@1`` / ``recall@10`` against exact search, ``votes_s`` the gallery
voting among itself from scratch (what a replica does once at start, exact
all-pairs; skipped, with the match columns, above ``--vote-up-to``
vectors), ``bounded_match`` and ``bounded_search`` the same two at Milvus's
Bounded consistency (a replica may see a change a moment late, and reads
wait for no write), ``add`` / ``delete`` one clip committed, and a
replica's memory: the resident memory a fresh process adds by opening the
gallery (``replica_mib``; every replica holds the
snapshot the voting reads) and, for Milvus, the server's
(``server_rss_mib``). Milvus is started here from the PyPI package
(``milvus-server``, its default settings) unless ``--milvus-uri`` names one.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bench.common import Timer, print_table, write_result
from bench.index import clustered, noisy
from metric_sub.match import load_match_config
from service.gallery import GalleryStore, Snapshot, SourceBoxes
from service.matcher import GalleryMatcher

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "service_match.json"
BACKENDS_OUT = Path(__file__).resolve().parent / "results" / "service_match_backends.json"
BACKEND_COLUMNS = ["backend", "vectors", "index", "load_s", "index_s", "votes_s", "match_p50_ms", "search_p50_ms",
                   "recall@1", "recall@10", "bounded_match_p50_ms", "bounded_search_p50_ms", "add_p50_ms",
                   "delete_p50_ms", "replica_mib", "server_rss_mib"]
REPLICA = """
import json, resource, sys
sys.path.insert(0, {repo!r})
def rss():
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmRSS"))) / 1024
from service.gallery import open_gallery
from service.settings import Settings
settings = Settings.model_validate_json({settings!r})
before = rss()
store = open_gallery(settings, {dim}, {{"bench": True}})
store.current()
print(json.dumps({{"replica_mib": rss() - before}}))
"""
COLUMNS = ["pairs", "item_boxes", "clip_boxes", "query", "gallery_votes_s", "p50_ms", "p95_ms", "right",
           "commit_p50_ms", "commit_max_ms"]
IMAGES, BOXES_PER_IMAGE, FRAMES, OTHERS = 5, 2, 16, 2
VECTORS_PER_PAIR = IMAGES * BOXES_PER_IMAGE + FRAMES * (1 + OTHERS)
SPREAD = 0.8


def item_source(source_id: str, centre: np.ndarray, rng: np.random.Generator) -> SourceBoxes:
    count = IMAGES * BOXES_PER_IMAGE
    return SourceBoxes("item", source_id, "bench", noisy(np.repeat(centre[None], count, 0), SPREAD, rng),
                       [str(n // BOXES_PER_IMAGE) for n in range(count)], [-1] * count,
                       [(10 * n, 10, 10 * n + 100, 200) for n in range(count)], [0.95] * count, [0] * count, IMAGES)


def clip_source(source_id: str, centre: np.ndarray, others: np.ndarray, rng: np.random.Generator) -> SourceBoxes:
    """16 frames, each with the product and ``OTHERS`` other garments (drawn from ``others``, garments that
    are not on sale: the host's own clothes, the rack behind)."""
    per_frame = 1 + OTHERS
    centres = np.concatenate([np.repeat(centre[None], FRAMES, 0),
                              others[rng.integers(0, len(others), FRAMES * OTHERS)]])
    count = FRAMES * per_frame
    frames = [80 + 20 * (n % FRAMES) for n in range(count)]
    return SourceBoxes("clip", source_id, "bench", noisy(centres, SPREAD, rng), [""] * count, frames,
                       [(5 * (n // FRAMES), 20, 5 * (n // FRAMES) + 300, 500) for n in range(count)],
                       [0.97] * count, [0] * count, FRAMES)


def gallery_sources(pairs: int, dim: int, rng: np.random.Generator) -> tuple[list[SourceBoxes], np.ndarray]:
    """The gallery's sources and the garment centres: the first ``pairs`` on sale, the rest not."""
    _, centres = clustered(0, dim, 2 * pairs, SPREAD, rng)
    items = [item_source(f"{k:06d}", centres[k], rng) for k in range(pairs)]
    clips = [clip_source(f"{k:06d}", centres[k], centres[pairs:], rng) for k in range(pairs)]
    return items + clips, centres


def queries(kind: str, count: int, pairs: int, centres: np.ndarray,
            rng: np.random.Generator) -> list[tuple[SourceBoxes, str]]:
    """``(query, the id it should match)``: new queries take ids the gallery lacks."""
    out = []
    for k in rng.choice(pairs, count, replace=False):
        source_id = f"{k:06d}" if kind.endswith("indexed") else f"9{k:05d}"
        query = (clip_source(source_id, centres[k], centres[pairs:], rng) if kind.startswith("clip")
                 else item_source(source_id, centres[k], rng))
        out.append((query, f"{k:06d}"))
    return out


def measure(pairs: int, args: argparse.Namespace, rng: np.random.Generator, folder: Path) -> list[dict]:
    sources, centres = gallery_sources(pairs, args.dim, rng)
    store = GalleryStore(folder / f"gallery-{pairs}", args.dim, {"bench": True}, fresh=True)
    snapshot = store.replace_all(sources)
    matcher = GalleryMatcher(load_match_config().vote)
    with Timer() as scratch:
        matcher.gallery_votes(snapshot)
    size = {"pairs": pairs, "item_boxes": len(snapshot.sides["item"]), "clip_boxes": len(snapshot.sides["clip"])}
    rows = []
    for kind in ("clip new", "clip indexed", "item new", "item indexed"):
        times, right = time_queries(matcher, snapshot, queries(kind, args.queries, pairs, centres, rng))
        rows.append({**size, "query": kind, "gallery_votes_s": round(scratch.seconds, 3), **_percentiles(times),
                     "right": right})
        print_table(rows[-1:], COLUMNS)
    for kind in ("add clip", "add item"):
        added = [source for source, _ in queries(kind.split()[1] + " new", args.changes, pairs, centres, rng)]
        commits, votes = time_changes(store, matcher, added)
        rows.append({**size, "query": kind, **_percentiles(votes), "commit_p50_ms": 1000 * statistics.median(commits),
                     "commit_max_ms": 1000 * max(commits)})
        print_table(rows[-1:], COLUMNS)
    store.close()
    return rows


def time_queries(matcher: GalleryMatcher, snapshot: Snapshot,
                 asked: list[tuple[SourceBoxes, str]]) -> tuple[list[float], float]:
    """Seconds per match and the share matched to the partner they were drawn from."""
    times, right = [], 0
    for query, expected in asked:
        with Timer() as timer:
            answer = matcher.match(query, snapshot)
        times.append(timer.seconds)
        pair = answer["match"]
        right += bool(pair) and (pair["item_id"] if query.kind == "clip" else pair["video_id"]) == expected
    return times, right / len(asked)


def time_changes(store: GalleryStore, matcher: GalleryMatcher,
                 added: list[SourceBoxes]) -> tuple[list[float], list[float]]:
    """Seconds per commit of one new entry, and per derivation of the new generation's votes."""
    commits, votes = [], []
    for source in added:
        with Timer() as commit:
            snapshot = store.put([source])
        with Timer() as timer:
            matcher.gallery_votes(snapshot)
        commits.append(commit.seconds)
        votes.append(timer.seconds)
    return commits, votes


def _percentiles(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": 1000 * statistics.median(seconds), "p95_ms": 1000 * float(np.percentile(seconds, 95))}


def _rss_mib(pid: int) -> float:
    """Resident memory of a process and every process in its process group (a server and its children)."""
    total = 0.0
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pid:  # the process group
            total += int(fields[21]) * 4096 / 2**20
    return total


def _replica_mib(settings, dim: int) -> float:
    """What a fresh process's resident memory grows by when it opens the gallery (a replica starting)."""
    import json
    import subprocess
    import sys

    script = REPLICA.format(repo=str(Path(__file__).resolve().parents[1]), settings=settings.model_dump_json(),
                            dim=dim)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return round(json.loads(done.stdout.strip().splitlines()[-1])["replica_mib"], 1)


def _median_ms(seconds: list[float], digits: int) -> float | None:
    return round(1000 * statistics.median(seconds), digits) if seconds else None


def _time_reads(store, matcher: GalleryMatcher, asked: list, probes: np.ndarray,
                ) -> tuple[list[float], list[float], np.ndarray]:
    """Seconds per match of each asked query (the newest generation read first) and per 10-nearest search of
    each probe through the backend, with the ids found."""
    match_times, search_times, found = [], [], []
    for query, _ in asked:
        with Timer() as timer:
            matcher.match(query, store.current())
        match_times.append(timer.seconds)
    for probe in probes:
        with Timer() as timer:
            found.append(store.search("clip", probe[None], 10)[1][0])
        search_times.append(timer.seconds)
    return match_times, search_times, np.asarray(found)


def backend_rows(args: argparse.Namespace, rng: np.random.Generator, folder: Path) -> list[dict]:
    """Each gallery backend on the same generated galleries (see the module docstring)."""
    from service.gallery import open_gallery
    from service.gallery.model import search_side
    from service.settings import GallerySettings, Settings

    backends = args.backend.split(",")
    server = None
    uri = args.milvus_uri
    if "milvus" in backends and not uri:
        from service.gallery.milvus_server import LocalMilvus

        server = LocalMilvus(folder / "milvus").start()
        uri = server.uri
    rules = load_match_config().vote
    rows = []
    try:
        for vectors in (int(v) for v in args.vectors.split(",")):
            pairs = max(1, vectors // VECTORS_PER_PAIR)
            sources, centres = gallery_sources(pairs, args.dim, rng)
            asked = queries("clip new", args.queries, pairs, centres, rng)
            probes = np.concatenate([q.vectors[:1] for q, _ in queries("item new", args.queries, pairs, centres,
                                                                       rng)])
            changes = [q for q, _ in queries("clip new", args.changes, pairs, centres, rng)]
            for backend in backends:
                gallery = GallerySettings(backend=backend, uri=uri or "http://127.0.0.1:19530",
                                          collection=f"bench_{vectors}", index=args.milvus_index)
                settings = Settings(data_dir=folder / f"{backend}-{vectors}", gallery=gallery)
                store = open_gallery(settings, args.dim, {"bench": True}, fresh=True)
                with Timer() as load:
                    store.replace_all(sources)
                index_s = store.settle() if backend == "milvus" else 0.0
                snapshot = store.current()
                voting = vectors <= args.vote_up_to
                matched = asked if voting else []  # a match reads the gallery's votes
                matcher = GalleryMatcher(rules)
                with Timer() as votes:
                    if voting:
                        matcher.gallery_votes(snapshot)
                match_times, search_times, found = _time_reads(store, matcher, matched, probes)
                bounded_match, bounded_search = [], []
                if backend == "milvus":  # the same reads at Bounded consistency: no wait for the newest writes
                    strong = store.config
                    store.config = strong.model_copy(update={"consistency": "Bounded"})
                    bounded_match, bounded_search, _ = _time_reads(store, matcher, matched, probes)
                    store.config = strong
                exact = search_side(snapshot.sides["clip"], probes, 10)[1]
                adds, deletes = [], []
                for source in changes:
                    with Timer() as timer:
                        store.put([source])
                    adds.append(timer.seconds)
                for source in changes:
                    with Timer() as timer:
                        store.delete("clip", source.source_id)
                    deletes.append(timer.seconds)
                row = {"backend": backend, "vectors": len(snapshot.sides["item"]) + len(snapshot.sides["clip"]),
                       "index": args.milvus_index if backend == "milvus" else "flat (exact)",
                       "load_s": round(load.seconds, 2), "index_s": round(index_s, 1),
                       "votes_s": round(votes.seconds, 1) if voting else None,
                       "match_p50_ms": _median_ms(match_times, 1),
                       "search_p50_ms": round(1000 * statistics.median(search_times), 2),
                       "recall@1": round(float(np.mean(found[:, 0] == exact[:, 0])), 3),
                       "recall@10": round(float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])),
                                          3),
                       "bounded_match_p50_ms": _median_ms(bounded_match, 1),
                       "bounded_search_p50_ms": _median_ms(bounded_search, 2),
                       "add_p50_ms": round(1000 * statistics.median(adds), 1),
                       "delete_p50_ms": round(1000 * statistics.median(deletes), 1),
                       "replica_mib": _replica_mib(settings, args.dim),
                       "server_rss_mib": round(_rss_mib(server.process.pid), 1) if server and backend == "milvus"
                       else None}
                store.close()
                rows.append(row)
                print_table([row], BACKEND_COLUMNS)
    finally:
        if server is not None:
            server.stop()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.service_match", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="250,1000,4000", help="comma-separated gallery sizes (item-clip pairs)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=20, help="queries per kind and size")
    parser.add_argument("--changes", type=int, default=8, help="gallery additions timed per kind and size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT.name}, or "
                                                                  f"{BACKENDS_OUT.name} with --backend")
    parser.add_argument("--backend", help="compare gallery backends instead: local, milvus or local,milvus")
    parser.add_argument("--vectors", default="10000,100000", help="with --backend: gallery sizes in box vectors")
    parser.add_argument("--milvus-uri", help="with --backend milvus: a running Milvus (default: start one here)")
    parser.add_argument("--milvus-index", default="HNSW", choices=("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8"))
    parser.add_argument("--vote-up-to", type=int, default=200_000,
                        help="with --backend: largest gallery whose votes (and so matches) are timed; the gallery's "
                             "exact vote from scratch grows with the product of its item and clip boxes")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    if args.backend:
        with tempfile.TemporaryDirectory() as tmp:
            rows = backend_rows(args, rng, Path(tmp))
        print()
        print_table(rows, BACKEND_COLUMNS)
        path = write_result(args.out or BACKENDS_OUT, "service_match_backends", rows, {
            "dim": args.dim, "queries": args.queries, "changes": args.changes, "threads": torch.get_num_threads(),
            "milvus": "PyPI milvus 2.3.5 standalone (milvus-server), default settings",
            "consistency": "Strong (bounded_*: Bounded)", "vote_up_to": args.vote_up_to,
            "note": "2-core machine possibly shared with other jobs during the run"})
        print(f"written {path}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for p in args.pairs.split(",") for row in measure(int(p), args, rng, Path(tmp))]
    print()
    print_table(rows, COLUMNS)
    path = write_result(args.out or DEFAULT_OUT, "service_match", rows, {
        "dim": args.dim, "queries": args.queries, "changes": args.changes, "threads": torch.get_num_threads(),
        "vote": load_match_config().vote.model_dump()})
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
