"""Gallery search benchmark: exact and approximate indexes, their speed, memory and recall against exact search.

Run from the repository root::

    python -m bench.index [--sizes 10000,100000,1000000] [--dim 512] [--queries 1000]
                          [--nprobe 8,32,128] [--out bench/results/index.json]

The gallery is clustered like real box embeddings: ``size / 48`` items (one
clip's 16 frames with about three boxes each), every vector its item's
centre plus noise, so that two boxes of one item sit at a squared distance of
about ``--spread`` (0.8 by default, where the pipeline's same-item pairs lie)
and the nearest neighbour is rarely a tie. Queries are fresh draws of
random items, as shop-image boxes are of the clips' items. Per gallery size:

* ``flat`` (FAISS's exact inner-product search over the host vectors) is
  the exact reference; ``torch`` the matmul + ``topk`` backend on the same CPU;
* ``ivf`` and ``ivfpq`` (``metric_sub.index.IndexConfig``; ``nlist``
  capped at a sixteenth of the gallery) at each ``--nprobe``, ``ivfpq``
  in PQ's own order (``rerank`` 1) and re-ranked exactly (the default).

Columns: ``build_s`` (add, and training for IVF), ``memory_mib`` (resident
memory the index added, host copy included), ``queries_per_s`` for one batch
of ``--queries``, ``latency_ms`` for one query at a time (median of
``--single``), and ``recall@1``/``recall@10``: the share of the exact
neighbours the index returned.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bench.common import Timer, format_value, print_table, write_result
from metric_sub.index import GalleryIndex, IndexConfig, unit_rows

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "index.json"
COLUMNS = ["size", "dim", "index", "nprobe", "rerank", "build_s", "memory_mib", "queries_per_s", "latency_ms",
           "recall@1", "recall@10"]
BOXES_PER_ITEM = 48


def clustered(count: int, dim: int, items: int, spread: float, rng: np.random.Generator,
              centres: np.ndarray | None = None, categories: int = 23) -> tuple[np.ndarray, np.ndarray]:
    """``count`` unit vectors around ``items`` item centres (or the given ones); returns them and the centres.

    Item centres themselves gather around ``categories`` category centres
    (the contest's 23 garment classes), two items of one category at a
    squared distance of about 1.0: neighbours of other items are near, as in
    real galleries, not spread evenly over the sphere. Draws of one centre with
    per-coordinate noise ``sigma`` have cosine ``1 / (1 + sigma^2 dim)`` to
    each other, so ``spread`` fixes ``sigma``.
    """
    if centres is None:
        tops = unit_rows(rng.standard_normal((categories, dim), dtype=np.float32))
        centres = noisy(tops[rng.integers(0, categories, items)], 0.6, rng)
    vectors = np.empty((count, dim), np.float32)
    for start in range(0, count, 65536):  # in blocks: the noise of a million rows at once doubles peak memory
        stop = min(start + 65536, count)
        vectors[start:stop] = noisy(centres[rng.integers(0, len(centres), stop - start)], spread, rng)
    return vectors, centres


def noisy(centres: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around ``centres``: two draws of one centre lie at squared distance ``spread``."""
    sigma = np.float32(np.sqrt(spread / (2 - spread) / centres.shape[1]))
    return unit_rows(centres + sigma * rng.standard_normal(centres.shape, dtype=np.float32))


def resident_mib() -> float:
    """This process's resident memory now (Linux ``/proc``), in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Share of the exact top-``k`` ids that ``found``'s top-``k`` holds."""
    hits = [len(set(f[:k]) & set(e[:k])) for f, e in zip(found, exact)]
    return float(np.sum(hits) / (len(exact) * k))


def single_latency_ms(index: GalleryIndex, queries: np.ndarray, count: int) -> float:
    times = []
    for query in queries[:count]:
        with Timer() as timer:
            index.search(query[None], 10)
        times.append(timer.seconds)
    return 1000 * statistics.median(times)


def build(gallery: np.ndarray, config: IndexConfig) -> tuple[GalleryIndex, float, float]:
    """The index over ``gallery``, its build seconds and the resident MiB it added."""
    gc.collect()
    before = resident_mib()
    with Timer() as timer:
        index = GalleryIndex(gallery.shape[1], config, "cpu")
        index.add(gallery)
    return index, timer.seconds, resident_mib() - before


def measure_size(size: int, dim: int, args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
    gallery, centres = clustered(size, dim, max(1, size // BOXES_PER_ITEM), args.spread, rng)
    queries, _ = clustered(args.queries, dim, 0, args.spread, rng, centres)
    setups = [("flat", IndexConfig(backend="faiss"), [None]), ("torch", IndexConfig(backend="torch"), [None]),
              ("ivf", IndexConfig(kind="ivf"), args.nprobe),
              ("ivfpq", IndexConfig(kind="ivfpq", pq_m=args.pq_m, rerank=1), args.nprobe),
              ("ivfpq", IndexConfig(kind="ivfpq", pq_m=args.pq_m), args.nprobe)]
    rows, exact = [], None
    for name, config, probes in setups:
        index, build_s, memory = build(gallery, config)
        for nprobe in probes:
            if nprobe is not None:
                index.config = config.model_copy(update={"nprobe": nprobe})
            index.search(queries[:10], 10)  # warm-up: thread pools and the re-rank's id order
            with Timer() as timer:
                _, found = index.search(queries, 10)
            if exact is None:
                exact = found
            rows.append({"size": size, "dim": dim, "index": name, "nprobe": nprobe,
                         "rerank": config.rerank if name == "ivfpq" else None, "build_s": round(build_s, 2),
                         "memory_mib": round(memory, 1), "queries_per_s": round(len(queries) / timer.seconds, 1),
                         "latency_ms": round(single_latency_ms(index, queries, args.single), 3),
                         "recall@1": recall(found, exact, 1), "recall@10": recall(found, exact, 10)})
            print(" ".join(f"{c}={format_value(rows[-1][c])}" for c in COLUMNS), flush=True)
        del index
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.index", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated gallery sizes")
    parser.add_argument("--dim", type=int, default=512, help="vector dimension (one model: 512)")
    parser.add_argument("--queries", type=int, default=1000, help="queries per batch")
    parser.add_argument("--single", type=int, default=50, help="single queries timed for the latency")
    parser.add_argument("--nprobe", default="8,32,128", help="comma-separated IVF probes")
    parser.add_argument("--pq-m", type=int, default=IndexConfig().pq_m, help="PQ sub-quantisers (must divide --dim)")
    parser.add_argument("--spread", type=float, default=0.8, help="squared distance between boxes of one item")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.nprobe = [int(p) for p in args.nprobe.split(",")]
    rng = np.random.default_rng(args.seed)
    rows = [row for size in args.sizes.split(",") for row in measure_size(int(size), args.dim, args, rng)]
    print()
    print_table(rows, COLUMNS)
    path = write_result(args.out, "index", rows, {
        "queries": args.queries, "single": args.single, "spread": args.spread, "pq_m": args.pq_m,
        "boxes_per_item": BOXES_PER_ITEM, "threads": torch.get_num_threads(), "nlist": IndexConfig().nlist})
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
