"""The FAISS vector index: exact inner product by default, IVF or HNSW by setting, GPU search when present.

Vectors are unit length, so inner product is cosine similarity. Ids are the store's chunk ids. The store
keeps every vector too, so an index can always be rebuilt from it (HNSW cannot remove ids in place).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import faiss
import numpy as np

from rag.files import fsync
from rag.settings import IndexSettings

log = logging.getLogger(__name__)

# IVF needs enough points per list to train; below this many vectors per list it falls back to exact search.
_MIN_POINTS_PER_LIST = 39


def choose_kind(settings: IndexSettings, n: int) -> str:
    """The concrete index kind for ``n`` vectors under ``settings.kind``."""
    if settings.kind != "auto":
        return settings.kind
    return "ivf" if n > settings.auto_threshold else "flat"


class VectorIndex:
    """A FAISS index over (id, vector) pairs with add, remove, search, save and load."""

    def __init__(self, dim: int, settings: IndexSettings, kind: str = "flat"):
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if kind not in ("flat", "ivf", "hnsw"):
            raise ValueError(f"unknown index kind {kind!r}: use flat, ivf or hnsw")
        self.dim = dim
        self.settings = settings
        self.kind = kind
        if settings.search_threads:
            faiss.omp_set_num_threads(settings.search_threads)  # process-wide in faiss; see the setting
        self._cpu = self._empty(kind)
        self._gpu = None  # search copy on the GPU, rebuilt lazily after changes

    # -- building -------------------------------------------------------------------------------------
    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, settings: IndexSettings, dim: int) -> "VectorIndex":
        """A fresh index over all ``vectors`` (n, dim) with ``ids`` (n,), kind chosen by settings and n."""
        kind = choose_kind(settings, len(ids))
        nlist = 0
        if kind == "ivf":
            nlist = settings.ivf_nlist or max(1, int(4 * math.sqrt(len(ids))))
            if len(ids) < nlist * _MIN_POINTS_PER_LIST:
                nlist = max(1, len(ids) // _MIN_POINTS_PER_LIST)
            if nlist < 2:
                log.info("too few vectors (%d) to train IVF; using exact search", len(ids))
                kind = "flat"
        index = cls(dim, settings, kind)
        if kind == "ivf":
            index._cpu = index._train_ivf(vectors, nlist)
        index.add(ids, vectors)
        return index

    def _empty(self, kind: str) -> faiss.Index:
        if kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(self.dim, self.settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efSearch = self.settings.hnsw_ef_search
            return faiss.IndexIDMap2(hnsw)
        if kind == "ivf":
            # Replaced by a trained index in build(); an untrained IVF cannot take vectors.
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _train_ivf(self, vectors: np.ndarray, nlist: int) -> faiss.Index:
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(_f32(vectors))
        ivf.nprobe = self.settings.ivf_nprobe
        return ivf

    # -- changes --------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self._cpu.ntotal)

    @property
    def supports_remove(self) -> bool:
        return self.kind != "hnsw"

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (n, dim) vectors under int64 ids (n,)."""
        if len(ids) == 0:
            return
        vectors = _f32(vectors)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"vectors shape {vectors.shape} does not match ({len(ids)}, {self.dim})")
        self._cpu.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
        self._gpu = None

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids; returns how many were removed. HNSW cannot: rebuild from the store instead."""
        if len(ids) == 0:
            return 0
        if not self.supports_remove:
            raise NotImplementedError("HNSW indexes cannot remove vectors; rebuild from the store")
        removed = self._cpu.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))
        self._gpu = None
        return int(removed)

    # -- search ---------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query: (scores (q, k) float32, ids (q, k) int64); missing slots have id -1."""
        queries = _f32(np.atleast_2d(queries))
        k = max(1, min(k, max(self.ntotal, 1)))
        scores, ids = self._search_index().search(queries, k)
        return scores, ids

    def _search_index(self) -> faiss.Index:
        if self._gpu is None and self._gpu_wanted():
            self._gpu = _to_gpu(self._cpu)
        return self._gpu if self._gpu is not None else self._cpu

    def _gpu_wanted(self) -> bool:
        return self.settings.use_gpu == "auto" and self.kind != "hnsw" and gpu_count() > 0

    @property
    def on_gpu(self) -> bool:
        return self._gpu is not None

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write to ``path`` durably (fsync), so a rename after this call publishes a complete file."""
        faiss.write_index(self._cpu, str(path))
        fsync(path)

    @classmethod
    def load(cls, path: Path, settings: IndexSettings) -> "VectorIndex":
        cpu = faiss.read_index(str(path))
        index = cls(cpu.d, settings, _kind_of(cpu))
        if isinstance(cpu, faiss.IndexIVF):
            cpu.nprobe = settings.ivf_nprobe
        index._cpu = cpu
        return index


def gpu_count() -> int:
    """GPUs faiss can use: 0 with faiss-cpu."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None and hasattr(faiss, "StandardGpuResources") else 0


def _to_gpu(cpu: faiss.Index) -> faiss.Index | None:
    try:
        resources = faiss.StandardGpuResources()
        options = faiss.GpuClonerOptions()
        options.useFloat16 = True  # halves memory and doubles flat-search throughput; recall checked in bench
        gpu = faiss.index_cpu_to_gpu(resources, 0, cpu, options)
        gpu.referenced_resources = resources  # keep the resources alive as long as the index
        return gpu
    except Exception as exc:  # a GPU without memory or an unsupported index: search stays on the CPU
        log.warning("GPU search unavailable, staying on the CPU: %s", exc)
        return None


def _kind_of(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexIVF):
        return "ivf"
    return "flat"


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)
