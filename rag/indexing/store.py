"""The embedded store: documents, chunk texts, metadata and vectors in SQLite, keyed by the FAISS ids.

Chunk ids come from an AUTOINCREMENT key, so an id is never reused after a delete and a FAISS id always
means one chunk. The store holds each chunk's vector as well, which lets the FAISS file be rebuilt from
it at any time.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag.types import Chunk

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,          -- relative to the ingested folder, POSIX separators
    collection TEXT NOT NULL,           -- 'folder' (rag-ingest) or 'upload' (POST /v1/documents)
    content_hash TEXT NOT NULL,         -- sha256 of the file bytes
    pages INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    ingested_at REAL NOT NULL           -- unix seconds
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- the FAISS id
    document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    page_start INTEGER NOT NULL,
    page_end INTEGER NOT NULL,
    char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL,
    text TEXT NOT NULL,
    embedding BLOB NOT NULL                 -- float32 (dim,)
);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(document_id);
CREATE TABLE IF NOT EXISTS failures (   -- folder files the last ingest could not use, so an unchanged one is
    path TEXT PRIMARY KEY,              -- reported again without being parsed again
    content_hash TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class DocumentRecord:
    """One stored document."""

    id: int
    path: str
    collection: str
    content_hash: str
    pages: int
    chunks: int
    size_bytes: int
    ingested_at: float


class ChunkStore:
    """SQLite file ``<index>/store.sqlite``; one connection guarded by a lock (FastAPI serves from threads)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None

    def open(self) -> "ChunkStore":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")  # readers (the API) keep reading while an ingest writes
        db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not only a process kill
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(SCHEMA)
        self._db = db
        return self

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("ChunkStore.open() must be called first")
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything inside commits together or not at all."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # -- metadata -------------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        """Write inside a transaction() block to commit it with the data it describes."""
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- documents ------------------------------------------------------------------------------------
    def documents(self, collection: str | None = None) -> dict[str, DocumentRecord]:
        """Stored documents by path, optionally of one collection."""
        sql = "SELECT id, path, collection, content_hash, pages, chunks, size_bytes, ingested_at FROM documents"
        args: tuple = ()
        if collection is not None:
            sql += " WHERE collection = ?"
            args = (collection,)
        with self._lock:
            rows = self.db.execute(sql + " ORDER BY path", args).fetchall()
        return {row[1]: DocumentRecord(*row) for row in rows}

    def delete_document(self, path: str) -> list[int]:
        """Delete a document and its chunks (inside a transaction); returns the removed chunk ids."""
        ids = [r[0] for r in self.db.execute(
            "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.path = ?", (path,)
        )]
        self.db.execute("DELETE FROM documents WHERE path = ?", (path,))
        return ids

    def insert_document(
        self, path: str, collection: str, content_hash: str, pages: int, size_bytes: int,
        chunks: list[Chunk], vectors: np.ndarray,
    ) -> list[int]:
        """Insert a document with its chunks and their (n, dim) vectors (inside a transaction); returns ids."""
        cur = self.db.execute(
            "INSERT INTO documents(path, collection, content_hash, pages, chunks, size_bytes, ingested_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (path, collection, content_hash, pages, len(chunks), size_bytes, time.time()),
        )
        doc_id = cur.lastrowid
        ids = []
        for chunk, vector in zip(chunks, np.asarray(vectors, dtype=np.float32), strict=True):
            cur = self.db.execute(
                "INSERT INTO chunks(document_id, position, page_start, page_end, char_start, char_end, text, "
                "embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (doc_id, chunk.position, chunk.page_start, chunk.page_end, chunk.char_start, chunk.char_end,
                 chunk.text, vector.tobytes()),
            )
            ids.append(cur.lastrowid)
        return ids

    def failures(self) -> dict[str, tuple[str, str]]:
        """Files that failed on the last ingest: path -> (content hash, reason)."""
        with self._lock:
            rows = self.db.execute("SELECT path, content_hash, reason FROM failures").fetchall()
        return {row[0]: (row[1], row[2]) for row in rows}

    def replace_failures(self, failures: list[tuple[str, str, str]]) -> None:
        """Record (path, content hash, reason) as the failures of the last ingest, in a transaction of its own
        (losing it only means parsing those files once more)."""
        with self.transaction():
            self.db.execute("DELETE FROM failures")
            self.db.executemany("INSERT OR REPLACE INTO failures(path, content_hash, reason) VALUES (?, ?, ?)", failures)

    # -- chunks ---------------------------------------------------------------------------------------
    _CHUNK_COLUMNS = (
        "c.id, d.path, d.content_hash, c.page_start, c.page_end, c.char_start, c.char_end, c.text, c.position"
    )

    def chunks_by_ids(self, ids: list[int]) -> dict[int, Chunk]:
        """Chunks for the given ids (missing ids are absent from the result)."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self.db.execute(
                f"SELECT {self._CHUNK_COLUMNS} FROM chunks c JOIN documents d ON d.id = c.document_id "
                f"WHERE c.id IN ({marks})", [int(i) for i in ids],
            ).fetchall()
        return {row[0]: _chunk(row) for row in rows}

    def all_chunks(self) -> list[Chunk]:
        """Every chunk, ordered by id (for BM25 and consistency checks)."""
        with self._lock:
            rows = self.db.execute(
                f"SELECT {self._CHUNK_COLUMNS} FROM chunks c JOIN documents d ON d.id = c.document_id ORDER BY c.id"
            ).fetchall()
        return [_chunk(row) for row in rows]

    def vectors_by_ids(self, ids: list[int], dim: int) -> dict[int, np.ndarray]:
        """The stored (dim,) vector of each id present."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self.db.execute(
                f"SELECT id, embedding FROM chunks WHERE id IN ({marks})", [int(i) for i in ids]
            ).fetchall()
        return {row[0]: np.frombuffer(row[1], dtype=np.float32, count=dim) for row in rows}

    def count_chunks(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def all_vectors(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,) int64, vectors (n, dim) float32) of every chunk, for rebuilding the FAISS index."""
        with self._lock:
            rows = self.db.execute("SELECT id, embedding FROM chunks ORDER BY id").fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return ids, vectors


def _chunk(row: tuple) -> Chunk:
    cid, path, content_hash, page_start, page_end, char_start, char_end, text, position = row
    return Chunk(
        document=path, content_hash=content_hash, page_start=page_start, page_end=page_end,
        char_start=char_start, char_end=char_end, text=text, position=position, id=cid,
    )

