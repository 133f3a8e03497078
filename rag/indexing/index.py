"""The document index on disk: a SQLite store and a FAISS file that always agree.

Layout of ``<index>/``: ``store.sqlite`` (documents, chunks, vectors, meta) and ``vectors-<generation>.faiss``.
A change writes the next generation's FAISS file beside the current one, then commits the store's
transaction that records it as current: a kill before the commit leaves the previous pair in force (the
orphan file is swept later), a kill after it leaves the new pair. The store holds every vector, so a missing
or disagreeing FAISS file is rebuilt from it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag.errors import IndexMissing, IndexUnavailable
from rag.files import fsync
from rag.settings import IndexSettings
from rag.indexing.store import ChunkStore
from rag.types import Chunk
from rag.indexing.vector_index import VectorIndex, choose_kind

log = logging.getLogger(__name__)

STORE_FILE = "store.sqlite"
LOCK_FILE = ".write.lock"


class IndexBusy(IndexUnavailable):
    """Another process is writing to the index."""


class IndexIncompatible(IndexUnavailable):
    """The index was built with another embedder or chunking; the message says how to rebuild."""


@dataclass(frozen=True)
class NewDocument:
    """A parsed, chunked and embedded document ready to be stored."""

    path: str
    collection: str
    content_hash: str
    pages: int
    size_bytes: int
    chunks: list[Chunk]
    vectors: np.ndarray  # (len(chunks), dim) float32
    ocr_pages: int = 0  # pages whose text Tesseract read (counted in the ingest report, not stored)
    table_pages: int = 0  # pages whose table rows carry their headers (likewise)


@dataclass(frozen=True)
class Profile:
    """What the vectors depend on: an index only accepts chunks made the same way."""

    embedder: str
    dim: int
    chunk_tokens: int
    overlap_tokens: int

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


class DocumentIndex:
    """Open with ``DocumentIndex.open``; search with ``search``; change with ``apply`` under ``writing()``."""

    def __init__(self, path: Path, settings: IndexSettings, store: ChunkStore):
        self.path = path
        self.settings = settings
        self.store = store
        self.vectors: VectorIndex | None = None
        self.generation = 0

    # -- opening --------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, settings: IndexSettings, create: bool = False) -> "DocumentIndex":
        """Open the index at ``path``; ``create`` makes an empty one, else a missing index is IndexMissing."""
        store_path = path / STORE_FILE
        if not store_path.exists() and not create:
            raise IndexMissing(f"no index at {path}: run `rag-ingest DOCS_DIR --index {path}` first")
        index = cls(path, settings, ChunkStore(store_path).open())
        index._load_vectors()
        index._sweep_superseded()
        return index

    def close(self) -> None:
        self.store.close()

    @property
    def profile(self) -> Profile | None:
        raw = self.store.get_meta("profile")
        return Profile(**json.loads(raw)) if raw else None

    def check_profile(self, profile: Profile) -> None:
        """Refuse chunks embedded differently from what the index holds."""
        stored = self.profile
        if stored is not None and stored != profile and self.store.count_chunks() > 0:
            raise IndexIncompatible(
                f"the index at {self.path} was built with {stored.to_json()}, not {profile.to_json()}: "
                "rerun rag-ingest with --rebuild, or point --index at a new folder"
            )

    def check_embedder(self, embedder: str, dim: int | None = None) -> None:
        """Refuse to search with another embedder than the one the index was built with (its vectors would
        be compared with query vectors of another space, or another size). An empty index takes any."""
        stored = self.profile
        if stored is None or self.store.count_chunks() == 0:
            return
        if stored.embedder != embedder or (dim is not None and stored.dim != dim):
            raise IndexIncompatible(
                f"the index at {self.path} was built with embedder {stored.embedder!r} ({stored.dim} dimensions), "
                f"but the configured embedder is {embedder!r}{f' ({dim} dimensions)' if dim else ''}: set "
                f"RAG_MODELS__EMBEDDER={stored.embedder}, or rebuild it with rag-ingest --rebuild"
            )

    def is_empty(self) -> bool:
        """Whether there is nothing to search (cheap while vectors are loaded: the store is asked only then)."""
        if self.vectors is not None and self.vectors.ntotal > 0:
            return False
        return self.store.count_chunks() == 0

    def _load_vectors(self) -> None:
        """Load the current FAISS file, rebuilding it from the store if missing or out of step."""
        self.generation = int(self.store.get_meta("generation", "0"))
        name = self.store.get_meta("faiss_file")
        count = self.store.count_chunks()
        profile = self.profile
        if profile is None:
            self.vectors = None
            return
        if name and (self.path / name).exists():
            vectors = VectorIndex.load(self.path / name, self.settings)
            if vectors.ntotal == count:
                self.vectors = vectors
                return
            log.warning("FAISS file %s holds %d vectors, store %d: rebuilding", name, vectors.ntotal, count)
        elif count:
            log.warning("FAISS file %s missing: rebuilding from the store", name)
        ids, vecs = self.store.all_vectors(profile.dim)
        self.vectors = VectorIndex.build(ids, vecs, self.settings, profile.dim)

    def refresh_if_stale(self) -> bool:
        """Reload when another process committed a newer generation; True if it did."""
        if int(self.store.get_meta("generation", "0")) == self.generation:
            return False
        self._load_vectors()
        return True

    # -- reading --------------------------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity) of the k nearest chunks to a (dim,) query, best first."""
        if self.vectors is None or self.vectors.ntotal == 0:
            return []
        scores, ids = self.vectors.search(query[None, :], k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    # -- writing --------------------------------------------------------------------------------------
    @contextmanager
    def writing(self, wait: bool = False) -> Iterator[None]:
        """Hold the index's write lock (one writer at a time, across processes)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK_FILE, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError as exc:
                raise IndexBusy(f"another process is writing to the index at {self.path}; try again later") from exc
            try:
                self.refresh_if_stale()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def apply(self, profile: Profile, remove: list[str], add: list[NewDocument]) -> tuple[int, int]:
        """Remove documents by path and add new ones, atomically with the FAISS file; call under writing().

        Returns (chunks removed, chunks added).
        """
        changed_profile = self.profile != profile
        if self.vectors is None or self.vectors.dim != profile.dim:
            self.vectors = VectorIndex(profile.dim, self.settings, choose_kind(self.settings, 0))
        try:
            with self.store.transaction():
                removed_ids: list[int] = []
                for path in remove:
                    removed_ids += self.store.delete_document(path)
                # Checked after the removals: a rebuild drops every old chunk in this same transaction.
                self.check_profile(profile)
                added = 0
                new_ids: list[int] = []
                new_vectors: list[np.ndarray] = []
                for doc in add:
                    ids = self.store.insert_document(
                        doc.path, doc.collection, doc.content_hash, doc.pages, doc.size_bytes, doc.chunks, doc.vectors
                    )
                    new_ids += ids
                    new_vectors.append(doc.vectors)
                    added += len(ids)
                self._update_vectors(
                    profile, np.asarray(removed_ids, dtype=np.int64), new_ids, new_vectors, changed_profile
                )
                generation = self.generation + 1
                name = f"vectors-{generation}.faiss"
                tmp = self.path / (name + ".tmp")
                self.vectors.save(tmp)
                os.replace(tmp, self.path / name)
                fsync(self.path)  # the rename is durable before the store says the new file is current
                self.store.set_meta("generation", str(generation))
                self.store.set_meta("faiss_file", name)
                self.store.set_meta("profile", profile.to_json())
        except BaseException:
            self._load_vectors()  # the in-memory index may hold uncommitted changes: back to the committed one
            raise
        self.generation = generation
        self._sweep(keep=name)
        return len(removed_ids), added

    def _update_vectors(
        self, profile: Profile, removed: np.ndarray, new_ids: list[int], new_vectors: list[np.ndarray],
        changed_profile: bool,
    ) -> None:
        total = self.vectors.ntotal - len(removed) + len(new_ids)
        if (
            changed_profile
            or (removed.size and not self.vectors.supports_remove)
            or choose_kind(self.settings, total) != self.vectors.kind
        ):
            # A new profile (a rebuild), HNSW's lack of delete, or crossing the auto threshold: rebuild from
            # the store, which already sees this transaction's rows.
            ids, vecs = self.store.all_vectors(profile.dim)
            self.vectors = VectorIndex.build(ids, vecs, self.settings, profile.dim)
            return
        self.vectors.remove(removed)
        if new_ids:
            self.vectors.add(np.asarray(new_ids, dtype=np.int64), np.concatenate(new_vectors))

    def _sweep_superseded(self) -> None:
        """Delete FAISS files of generations before the committed one (a kill between a commit and its clean-up
        leaves one). Safe without the write lock: a writer only ever creates the generation after the current."""
        for stale in self.path.glob("vectors-*.faiss*"):
            number = stale.name.removeprefix("vectors-").split(".", 1)[0]
            if number.isdigit() and int(number) < self.generation:
                stale.unlink(missing_ok=True)

    def _sweep(self, keep: str) -> None:
        """Delete FAISS files no generation refers to (left by this change or by a killed run)."""
        for stale in self.path.glob("vectors-*.faiss*"):
            if stale.name != keep:
                stale.unlink(missing_ok=True)
