"""A gallery of unit vectors with ids, searched for nearest neighbours by squared L2 distance.

Public API (the matcher and the REST service build on it)::

    index = GalleryIndex(dim, IndexConfig(), device="auto")
    ids = index.add(vectors, ids=None)        # int64 ids, new ones numbered after the largest so far
    index.remove(ids)                         # returns how many were removed
    distances, ids = index.search(queries, k) # (Q, k) squared L2, ascending; id -1 where fewer than k
    index.save(folder); GalleryIndex.load(folder, device="auto")

All vectors are unit-norm, so the squared L2 distance is ``2 - 2 * cosine``
(the seed's 1.12 cutoff is on this scale) and every backend ranks by inner
product and converts. Backends:

* ``faiss``: on CPU, FAISS's exact inner-product search (``faiss.knn``, the
  code behind ``IndexFlatIP``) run straight over the host vectors, so the
  gallery is held once, not twice;
* ``faiss-gpu``: the same index moved to the GPU, used on CUDA when the
  installed faiss has GPU support;
* ``torch``: one matmul and ``topk`` per query block, on CUDA when faiss has no
  GPU support (and on CPU when asked, for comparison).

The exact backends return the same neighbours (tested); ties between equal
inner products may come back in a different order. ``kind: ivf`` or
``ivfpq`` trade exactness for speed on galleries of millions (FAISS only;
``bench/index.py`` reports their speed, memory and recall against exact
search). The vectors themselves are kept on the host, so a gallery is
saved as plain arrays and any backend can be rebuilt from them; ``ivfpq``
uses that copy to re-rank its candidates exactly (``rerank``), without
which PQ's coarse codes miss most nearest neighbours of clustered
embeddings.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from dataset.config import StrictModel
from runtime.device import pick_device

try:
    import faiss
except ImportError:  # the torch backend covers every case
    faiss = None

Backend = Literal["auto", "faiss", "faiss-gpu", "torch"]


class IndexConfig(StrictModel):
    """How the gallery is searched; ``nlist``/``nprobe``/``pq_m`` apply to the approximate kinds only."""

    backend: Backend = "auto"
    kind: Literal["flat", "ivf", "ivfpq"] = "flat"
    nlist: int = Field(1024, gt=0)
    """IVF cells; capped at a sixteenth of the first batch added, so small galleries still train."""
    nprobe: int = Field(32, gt=0)
    pq_m: int = Field(64, gt=0)
    """PQ sub-quantisers (must divide the dimension)."""
    rerank: int = Field(8, ge=1)
    """``ivfpq``: fetch ``rerank * k`` candidates and order them by their exact distance (1: PQ's own order)."""
    query_block: int = Field(4096, gt=0)
    """Queries per matmul in the torch backend (bounds the (block, N) score matrix)."""


def faiss_has_gpu() -> bool:
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_backend(config: IndexConfig, device: torch.device) -> str:
    """The backend ``auto`` stands for on this device and with the installed faiss."""
    if config.kind != "flat" and faiss is None:
        raise RuntimeError(f"index kind {config.kind!r} needs faiss")
    if config.backend != "auto":
        if config.backend.startswith("faiss") and faiss is None:
            raise RuntimeError(f"backend {config.backend!r}: faiss is not installed")
        if config.backend == "faiss-gpu" and not faiss_has_gpu():
            raise RuntimeError("backend 'faiss-gpu': the installed faiss has no GPU support")
        return config.backend
    if device.type == "cuda":
        if faiss_has_gpu():
            return "faiss-gpu"
        return "torch" if config.kind == "flat" else "faiss"
    return "faiss" if faiss is not None else "torch"


class GalleryIndex:
    """Unit vectors with int64 ids; exact or IVF search. See the module docstring for the API."""

    def __init__(self, dim: int, config: IndexConfig | None = None, device: str | torch.device = "auto") -> None:
        self.dim = dim
        self.config = config or IndexConfig()
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.backend = resolve_backend(self.config, self.device)
        self.vectors = np.zeros((0, dim), np.float32)
        self.ids = np.zeros(0, np.int64)
        self._faiss = None  # built on the first add (IVF trains on it), then updated in place
        self._tensor: torch.Tensor | None = None  # the torch backend's device copy, rebuilt after changes
        self._id_order: np.ndarray | None = None  # argsort of ids, for re-ranking; rebuilt after changes

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, vectors: np.ndarray, ids: np.ndarray | None = None, unit: bool = False) -> np.ndarray:
        """Add rows (unit-normalised here); returns their ids. Given ids must be new.

        ``unit``: the rows are unit-norm float32 already and the index may keep
        the array itself. Rebuilding a gallery of hundreds of thousands of
        vectors then costs no normalising pass and no copy.
        """
        vectors = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        vectors = np.ascontiguousarray(vectors) if unit else unit_rows(vectors)
        if ids is None:
            start = int(self.ids.max()) + 1 if len(self.ids) else 0
            ids = np.arange(start, start + len(vectors), dtype=np.int64)
        ids = np.asarray(ids, np.int64).reshape(-1)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
        if len(np.unique(ids)) != len(ids) or np.isin(ids, self.ids).any():
            raise ValueError("ids must be unique and not already in the gallery")
        self.vectors = np.concatenate([self.vectors, vectors]) if len(self.vectors) else vectors
        self.ids = np.concatenate([self.ids, ids])
        if self.backend.startswith("faiss") and not self._searches_host and len(vectors):
            if self._faiss is None:
                self._faiss = self._build_faiss(vectors)
            self._faiss.add_with_ids(vectors, ids)
        self._tensor = self._id_order = None
        return ids

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Remove rows by id; ids not in the gallery are ignored. Returns how many were removed."""
        drop = np.isin(self.ids, np.asarray(ids, np.int64))
        count = int(drop.sum())
        if count:
            if self._faiss is not None:
                self._faiss.remove_ids(np.ascontiguousarray(self.ids[drop]))
            self.vectors, self.ids = self.vectors[~drop], self.ids[~drop]
            self._tensor = self._id_order = None
        return count

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, ids)``, each ``(Q, k)``: squared L2 ascending; ``inf``/-1 where the gallery is short."""
        queries = unit_rows(np.asarray(queries, np.float32).reshape(-1, self.dim))
        distances = np.full((len(queries), k), np.inf, np.float32)
        found = np.full((len(queries), k), -1, np.int64)
        if not len(queries) or not len(self.ids) or k < 1:
            return distances, found
        k = min(k, len(self.ids))
        if self.backend == "torch":
            scores, ids = self._search_torch(queries, k)
        elif self._searches_host:
            scores, rows = faiss.knn(queries, self.vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
            ids = self.ids[rows]
        elif self.config.kind == "flat":
            scores, ids = self._faiss.search(queries, k)
        else:
            faiss.extract_index_ivf(self._faiss).nprobe = self.config.nprobe
            fetch = k * self.config.rerank if self.config.kind == "ivfpq" else k
            scores, ids = self._faiss.search(queries, min(fetch, len(self.ids)))
            if fetch > k:
                scores, ids = self._rerank(queries, ids, k)
        valid = ids >= 0
        width = ids.shape[1]
        distances[:, :width] = np.where(valid, np.maximum(2.0 - 2.0 * scores, 0.0), np.inf)
        found[:, :width] = np.where(valid, ids, -1)
        return distances, found

    def save(self, folder: Path | str) -> Path:
        """Write ``vectors.npy``, ``ids.npy`` and ``index.json`` (settings) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in (("vectors", self.vectors), ("ids", self.ids)):
            np.save(folder / f"{name}.tmp.npy", array)
            (folder / f"{name}.tmp.npy").replace(folder / f"{name}.npy")
        (folder / "index.json").write_text(json.dumps({"dim": self.dim, "config": self.config.model_dump()}))
        return folder

    @classmethod
    def load(cls, folder: Path | str, device: str | torch.device = "auto",
             config: IndexConfig | None = None) -> GalleryIndex:
        """A saved gallery, rebuilt for this device (``config`` replaces the saved search settings)."""
        folder = Path(folder)
        meta = json.loads((folder / "index.json").read_text())
        index = cls(meta["dim"], config or IndexConfig(**meta["config"]), device)
        index.add(np.load(folder / "vectors.npy"), np.load(folder / "ids.npy"))
        return index

    @property
    def _searches_host(self) -> bool:
        """Exact search on CPU reads the host vectors directly: an ``IndexFlatIP`` would hold a second copy."""
        return self.backend == "faiss" and self.config.kind == "flat"

    def _build_faiss(self, first: np.ndarray):
        cfg = self.config
        if cfg.kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        else:
            nlist = max(1, min(cfg.nlist, len(first) // 16))
            quantizer = faiss.IndexFlatIP(self.dim)
            if cfg.kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss.IndexIVFPQ(quantizer, self.dim, nlist, cfg.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
            index.train(first)
        if self.backend == "faiss-gpu":
            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, self.device.index or 0, index)
        return index

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int,
                block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` candidates (id -1: none) with the largest exact inner products, best first.

        Queries go ``block`` at a time, bounding the gathered candidate vectors.
        """
        if self._id_order is None:
            self._id_order = np.argsort(self.ids, kind="stable")
        valid = candidates >= 0
        positions = np.searchsorted(self.ids, candidates, sorter=self._id_order)
        rows = self._id_order[np.minimum(positions, len(self.ids) - 1)]
        exact = np.concatenate([np.einsum("qd,qcd->qc", queries[s:s + block], self.vectors[rows[s:s + block]])
                                for s in range(0, len(queries), block)])
        exact = np.where(valid, exact, -np.inf)
        best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, best, 1), np.take_along_axis(np.where(valid, candidates, -1), best, 1)

    def _search_torch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._tensor is None:
            self._tensor = torch.from_numpy(self.vectors).to(self.device)
        all_scores, all_rows = [], []
        for start in range(0, len(queries), self.config.query_block):
            block = torch.from_numpy(queries[start:start + self.config.query_block]).to(self.device)
            scores, rows = torch.topk(block @ self._tensor.T, k, dim=1)
            all_scores.append(scores.cpu().numpy())
            all_rows.append(rows.cpu().numpy())
        rows = np.concatenate(all_rows)
        return np.concatenate(all_scores), self.ids[rows]


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as a new C-contiguous array."""
    return np.ascontiguousarray(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12))
