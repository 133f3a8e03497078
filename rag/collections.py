"""Named collections under one index root: each an index of its own, all served by one set of loaded models.

    <root>/                      the collection named ``default`` (the index every earlier version built)
    <root>/collections/<name>/   any other collection, laid out like any index (store, FAISS file, uploads/)

    collections = Collections(runtime)             # runtime: started over the root (the default collection)
    collections.get("team")                        # a Runtime over <root>/collections/team: its own index,
                                                   # documents and answers; the same embedder, generator, batcher
    collections.get("new", create=True)            # what an upload to a new collection does
    collections.names(), collections.counts("team")

A collection opens on first use (``Runtime.derive``) and stays open until ``close()``. Each has its own
index, hence its own write lock and generation files: the crash-safety guarantees of ``DocumentIndex`` hold per
collection unchanged. The command-line tools reach a collection through ``collection_overrides``.
"""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import IndexMissing, UsageError
from rag.settings import Settings

if TYPE_CHECKING:
    from rag.runtime import Runtime

DEFAULT_COLLECTION = "default"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
COLLECTIONS_DIR = "collections"  # under the index root; "uploads" (the default collection's) cannot clash
_NAME = re.compile(NAME_PATTERN)
_STORE_FILE = "store.sqlite"  # rag.indexing.index.STORE_FILE, without importing faiss for a name check


class BadCollectionName(UsageError):
    """A collection name outside NAME_PATTERN."""


class CollectionNotFound(IndexMissing):
    """No collection of that name under the index root."""


def check_name(name: str) -> str:
    """``name`` when it is a valid collection name, else BadCollectionName saying what is allowed."""
    if not _NAME.fullmatch(name):
        raise BadCollectionName(
            f"bad collection name {name!r}: 1 to 64 characters, lower-case letters, digits, '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def collection_path(root: Path, name: str) -> Path:
    """The index folder of collection ``name`` under the index root ``root``."""
    check_name(name)
    return Path(root) if name == DEFAULT_COLLECTION else Path(root) / COLLECTIONS_DIR / name


def collection_overrides(settings: Settings, name: str) -> dict[str, Any]:
    """Settings overrides (for ``Settings.with_overrides`` or ``Runtime.derive``) that point ``settings``, whose
    ``index.path`` is the root, at collection ``name``. A configured ``api.upload_dir`` gets a per-collection
    folder too, so two collections never share (and overwrite) each other's uploaded files."""
    if name == DEFAULT_COLLECTION:
        return {}
    overrides: dict[str, Any] = {"index": {"path": collection_path(settings.index.path, name)}}
    if settings.api.upload_dir is not None:
        overrides["api"] = {"upload_dir": settings.api.upload_dir / COLLECTIONS_DIR / name}
    return overrides


def collection_exists(root: Path, name: str) -> bool:
    return (collection_path(root, name) / _STORE_FILE).is_file()


def collection_names(root: Path) -> list[str]:
    """The collections stored under ``root``: ``default`` first when it exists, then the others by name."""
    names = [DEFAULT_COLLECTION] if collection_exists(root, DEFAULT_COLLECTION) else []
    folder = Path(root) / COLLECTIONS_DIR
    if folder.is_dir():
        names += sorted(
            p.name for p in folder.iterdir() if _NAME.fullmatch(p.name) and p.name != DEFAULT_COLLECTION
            and (p / _STORE_FILE).is_file()
        )
    return names


class Collections:
    """The collections of one index root, over a started Runtime of the root (the ``default`` collection).

    Every other collection is a ``runtime.derive`` over its own folder: an index, documents service, retriever
    and answer service of its own; the embedder, generator and batcher of ``runtime``. ``close()`` closes the
    collections opened here, never ``runtime`` (its owner closes it).
    """

    def __init__(self, runtime: "Runtime"):
        self.runtime = runtime
        self.root = Path(runtime.settings.index.path)
        self._open: dict[str, "Runtime"] = {}
        self._lock = threading.Lock()  # two first requests to one collection open it once

    def names(self) -> list[str]:
        """Every collection: ``default`` (always open) first, then those stored under the root, by name."""
        return [DEFAULT_COLLECTION] + [n for n in collection_names(self.root) if n != DEFAULT_COLLECTION]

    def get(self, name: str, create: bool = False) -> "Runtime":
        """The runtime serving collection ``name``: BadCollectionName for a bad name, CollectionNotFound for
        one that does not exist (unless ``create``, which makes it empty)."""
        check_name(name)
        if name == DEFAULT_COLLECTION:
            return self.runtime
        with self._lock:
            opened = self._open.get(name)
            if opened is None:
                if not create and not collection_exists(self.root, name):
                    raise CollectionNotFound(
                        f"no collection {name!r} under {self.root}: the collections are "
                        f"{', '.join(self.names())}; upload a PDF with ?collection={name} (or "
                        f"`rag-ingest DOCS_DIR --collection {name}`) to create it"
                    )
                opened = self.runtime.derive(collection_overrides(self.runtime.settings, name))
                self._open[name] = opened
            return opened

    def discard_if_empty(self, name: str) -> bool:
        """Remove collection ``name`` (closed, its folder deleted) when it holds no document and nobody writes to
        it: what an upload that created the collection and was then refused leaves behind. Never the default
        collection; False when nothing was removed."""
        from rag.indexing.index import IndexBusy

        if name == DEFAULT_COLLECTION:
            return False
        with self._lock:
            opened = self._open.get(name)
            if opened is None:
                return False
            try:
                with opened.index.writing():  # not while another upload writes to it
                    if opened.documents.counts()[0] or not opened.index.is_empty():
                        return False
                    del self._open[name]
            except IndexBusy:
                return False
            opened.close()
            shutil.rmtree(collection_path(self.root, name), ignore_errors=True)
        return True

    def counts(self, name: str) -> tuple[int, int]:
        """(documents, chunks) of collection ``name``; CollectionNotFound when there is none."""
        return self.get(name).documents.counts()

    def close(self) -> None:
        """Close the collections opened here (idempotent)."""
        with self._lock:
            opened, self._open = list(self._open.values()), {}
        for runtime in reversed(opened):
            runtime.close()
