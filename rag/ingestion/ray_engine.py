"""The Ray ingest engine: parsing, chunking and embedding as Ray Data stages, committed by the caller.

The dataset has one row per file (largest first), then three stages:

1. parse (tasks): a file of at most ``ingest.pages_per_task`` pages is read whole; a longer one has its first
   range read by the task itself and its other ranges read by Ray tasks it submits (spread over the cluster),
   which it waits for. Reading and checks are ``rag.ingestion.pdf_parsing``'s, as in the local process pool.
2. chunk (tasks, fused with parse): the ranges joined and chunked per document (``assemble_document`` and
   ``chunk_parsed``, the local engine's), then one row per chunk; a bad file becomes one failure row.
3. embed (``map_batches`` on an actor pool): each actor loads the embedder once, on a GPU when the cluster has
   them (``num_gpus=1`` per actor), and embeds batches of ``ingest.embed_batch_size`` chunks.

The driver (``RayEngine.run``) streams the embedded rows back, regroups them into documents, and yields them to
``Ingestor``, which commits exactly as for the local engine: same plan, same checkpoints, same index files.

Why long files fan out from inside the parse task rather than through a ``groupby`` of range rows: a
groupby is an all-to-all step, so no document could be chunked, embedded or committed before every page of
the corpus was parsed (no checkpoint for the whole parse, and the GPUs idle through it). Here each document
streams on as soon as its own ranges are in. A task blocked in ``ray.get`` hands its CPU back to Ray, so the
range tasks it waits for do not deadlock on a full cluster.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import ModelUnavailable, UsageError
from rag.indexing.index import NewDocument
from rag.settings import Settings
from rag.types import Chunk, FileFailure

log = logging.getLogger(__name__)

INSTALL_HINT = "the ray engine needs Ray: pip install -e '.[ray]' (on the driver and on every node)"
# One block per file lets every file start as its own task; past this many files, blocks hold several.
MAX_BLOCKS = 10_000


def import_ray():
    """``ray`` and ``ray.data``, or a UsageError with the install hint."""
    try:
        import ray
        import ray.data  # noqa: F401 - the extra's data part (pyarrow, pandas)
    except ImportError as exc:
        raise UsageError(f"{INSTALL_HINT} ({exc})") from exc
    return ray


def start_ray(settings: Settings, num_cpus: int | None = None) -> bool:
    """Connect to ``ingest.ray_address``, or start a private Ray instance on this machine when it is None.

    ``num_cpus`` caps a private instance (default: ``ingest.workers`` when set, else every core). The driver's
    ``rag`` package is shipped to the workers (``py_modules``), so that the nodes run the code this process
    runs; the nodes need the dependencies installed (``pip install -e '.[ray]'``). Returns False, and changes
    nothing, when Ray is already initialised in this process (a test fixture, a notebook).
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    import rag

    address = settings.ingest.ray_address
    kwargs: dict[str, Any] = {
        "runtime_env": {"py_modules": [rag]},
        "logging_level": logging.WARNING,
        "include_dashboard": False,
    }
    if address is None:
        kwargs["num_cpus"] = num_cpus or settings.ingest.workers or None
    elif num_cpus is not None:
        raise UsageError("num_cpus applies to a private Ray instance only, not to a cluster at an address")
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise UsageError(f"cannot reach a Ray cluster at {address!r}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - Ray raises plain Exception for a node that failed to start
        if address is not None:
            raise
        # On an overloaded machine the raylet can give up on its metrics agent after a fixed 15 s
        # (ray-project/ray#65983: "Timed out waiting for file .../metrics_agent_port_..."); a second start
        # usually comes up.
        log.warning("Ray failed to start (%s); trying once more", exc)
        ray.shutdown()
        ray.init(address=address, **kwargs)
    return True


@dataclass
class RayEngine:
    """Runs the ingest's parse, chunk and embed stages on Ray; see the module docstring."""

    settings: Settings
    _pending: dict[str, list[tuple[Chunk, np.ndarray]]] = field(default_factory=dict)

    def run(
        self, files: list[tuple[str, Path]], collection: str, stages: dict[str, float],
    ) -> Iterator[list[NewDocument | FileFailure]]:
        """Yield the files' results in completion order, in groups (one per block the cluster hands back)."""
        if not files:
            return
        ray = import_ray()
        started = time.perf_counter()
        owned = start_ray(self.settings)
        stages["ray_start"] = stages.get("ray_start", 0.0) + time.perf_counter() - started
        started = time.perf_counter()
        try:
            dataset = self._dataset(files)
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                yield self._collect(batch, collection)
            if self._pending:  # every chunk row carries its document's chunk count: never expected
                raise RuntimeError(f"incomplete documents from the Ray pipeline: {sorted(self._pending)}")
        finally:
            stages["ray_pipeline"] = stages.get("ray_pipeline", 0.0) + time.perf_counter() - started
            if owned:
                ray.shutdown()

    # -- the dataset ----------------------------------------------------------------------------------
    def _dataset(self, files: list[tuple[str, Path]]):
        import ray.data

        # The workers get the sections they use, not the API key or the index path.
        settings = Settings.model_construct(
            models=self.settings.models, chunking=self.settings.chunking, ingest=self.settings.ingest,
        )
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # rag-ingest shows its own, per file
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # execution plans and log paths on every run
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
        # Largest first, as the local pool does: long files fan out early instead of finishing last.
        ordered = sorted(files, key=lambda f: f[1].stat().st_size, reverse=True)
        rows = [{"name": name, "path": str(path)} for name, path in ordered]
        device, num_gpus, actors = _embed_placement(settings)
        return (
            ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS))
            .map(_parse_file, fn_kwargs={"settings": settings})
            .flat_map(_chunk_rows, fn_kwargs={"settings": settings})
            .map_batches(
                _EmbedStage,
                fn_constructor_kwargs={"settings": settings, "device": device},
                batch_size=settings.ingest.embed_batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_gpus=num_gpus,
                num_cpus=settings.ingest.ray_embed_cpus,
            )
        )

    # -- back on the driver ---------------------------------------------------------------------------
    def _collect(self, batch: dict[str, np.ndarray], collection: str) -> list[NewDocument | FileFailure]:
        """Failures, and the documents whose last chunk is in ``batch``; other chunks wait in ``_pending``."""
        done: list[NewDocument | FileFailure] = []
        for i in range(len(batch["name"])):
            name = str(batch["name"][i])
            if batch["failure"][i]:
                done.append(FileFailure(path=name, reason=str(batch["failure"][i])))
                continue
            chunk = Chunk(
                document=name, content_hash=str(batch["content_hash"][i]),
                page_start=int(batch["page_start"][i]), page_end=int(batch["page_end"][i]),
                char_start=int(batch["char_start"][i]), char_end=int(batch["char_end"][i]),
                text=str(batch["text"][i]), position=int(batch["position"][i]),
            )
            parts = self._pending.setdefault(name, [])
            parts.append((chunk, np.asarray(batch["vector"][i], dtype=np.float32)))
            if len(parts) < int(batch["n_chunks"][i]):
                continue
            del self._pending[name]
            parts.sort(key=lambda part: part[0].position)  # rows arrive in any order
            done.append(NewDocument(
                path=name, collection=collection, content_hash=chunk.content_hash, pages=int(batch["pages"][i]),
                size_bytes=int(batch["size_bytes"][i]), chunks=[c for c, _ in parts],
                vectors=np.stack([v for _, v in parts]),  # (n_chunks, dim)
                ocr_pages=int(batch["ocr_pages"][i]), table_pages=int(batch["table_pages"][i]),
            ))
        return done


def _embed_placement(settings: Settings) -> tuple[str, float | None, int]:
    """(actor device, GPUs per actor, number of actors) from the cluster's resources and the settings."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if settings.models.device == "cuda" and not gpus:
        raise ModelUnavailable(
            "models.device='cuda' but the Ray cluster has no GPU: add GPU nodes, or set RAG_MODELS__DEVICE=auto"
        )
    use_gpu = gpus > 0 and settings.models.device != "cpu"
    actors = settings.ingest.ray_embed_actors or (gpus if use_gpu else 1)
    cpus = ray.cluster_resources().get("CPU", 0)
    if actors * settings.ingest.ray_embed_cpus >= cpus:
        # The actors hold their CPUs for the whole run: no parse task could ever start, and Ray would wait.
        raise UsageError(
            f"{actors} embedding actor(s) x {settings.ingest.ray_embed_cpus:g} CPUs would take all {cpus:g} CPUs "
            "of the Ray cluster, leaving none to parse: lower ingest.ray_embed_actors or ingest.ray_embed_cpus, "
            "or give Ray more CPUs (--workers for a private instance)"
        )
    return ("cuda" if use_gpu else "cpu"), (1 if use_gpu else None), actors


# -- worker side ---------------------------------------------------------------------------------------------
# One chunker and one open file per worker process, rebuilt when the settings change: Ray reuses worker
# processes across tasks, and the ranges of one long file tend to land on the same workers in a row.
_worker_cache: dict[str, Any] = {}


def _worker(settings: Settings):
    from rag.ingestion.chunking import Chunker
    from rag.ingestion.pdf_parsing import LastOpenPdf
    from rag.models import resolve_embedder

    key = settings.model_dump_json(include={"models", "chunking", "ingest"})
    if _worker_cache.get("key") != key:
        _worker_cache.clear()
        # Resolved on the node: a packaged model lives in each node's own site-packages.
        _worker_cache["chunker"] = Chunker(resolve_embedder(settings.models), settings.chunking).load()
        _worker_cache["open"] = LastOpenPdf(settings.ingest)
        _worker_cache["key"] = key
    return _worker_cache["chunker"], _worker_cache["open"]


def _parse_file(row: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Stage 1: the file's page ranges (a long file's read in parallel), or its failure; pickled in ``parsed``."""
    import ray

    from rag.ingestion.pdf_parsing import guarded

    name, path = row["name"], Path(row["path"])
    per_task = settings.ingest.pages_per_task

    def parse():
        _, opened = _worker(settings)
        pdf = opened.get(path)
        first = pdf.read(0, per_task)
        starts = range(per_task, pdf.page_count, per_task)
        read_range = ray.remote(_read_range) if starts else None
        later = [read_range.remote(name, str(path), start, start + per_task, settings) for start in starts]
        parts = [first, *ray.get(later)]
        failures = [part for part in parts if isinstance(part, FileFailure)]
        return failures[0] if failures else parts  # the failure of the earliest range, as one process would

    return {"name": name, "path": str(path), "parsed": pickle.dumps(guarded(name, parse))}


def _read_range(name: str, path: str, start: int, stop: int, settings: Settings):
    """A Ray task (made remote in ``_parse_file``): pages [start, stop) of one file, or its failure."""
    from rag.ingestion.pdf_parsing import guarded

    return guarded(name, lambda: _worker(settings)[1].get(Path(path)).read(start, stop))


_CHUNK_DEFAULTS = {
    "content_hash": "", "pages": 0, "ocr_pages": 0, "table_pages": 0, "size_bytes": 0, "n_chunks": 0, "position": 0,
    "page_start": 0, "page_end": 0, "char_start": 0, "char_end": 0, "text": "",
}


def _chunk_rows(row: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """Stage 2: the document's chunks as rows (with what the driver needs to rebuild it), or one failure row."""
    from rag.ingestion.parse_pool import chunk_parsed
    from rag.ingestion.pdf_parsing import assemble_document, guarded

    name, path = row["name"], Path(row["path"])
    parsed = pickle.loads(row["parsed"])
    if not isinstance(parsed, FileFailure):
        chunker, _ = _worker(settings)
        parsed = guarded(name, lambda: chunk_parsed(
            chunker, name, path, assemble_document(path, parsed[0].content_hash, parsed, settings.ingest),
        ))
    if isinstance(parsed, FileFailure):
        return [{"name": name, "failure": parsed.reason, **_CHUNK_DEFAULTS}]
    return [
        {
            "name": name, "failure": "", "content_hash": c.content_hash, "pages": parsed.pages,
            "ocr_pages": parsed.ocr_pages, "table_pages": parsed.table_pages,
            "size_bytes": parsed.size_bytes, "n_chunks": len(parsed.chunks), "position": c.position,
            "page_start": c.page_start, "page_end": c.page_end, "char_start": c.char_start, "char_end": c.char_end,
            "text": c.text,
        }
        for c in parsed.chunks
    ]


class _EmbedStage:
    """Stage 3, one per actor: the embedder loaded once, then batches of chunk rows get a ``vector`` column."""

    def __init__(self, settings: Settings, device: str):
        from rag.indexing.embedding import SentenceTransformerEmbedder
        from rag.models import resolve_embedder
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a weight-loading bar per actor would land in the driver's output
        self.embedder = SentenceTransformerEmbedder(
            resolve_embedder(settings.models), device=device, batch_size=settings.ingest.embed_batch_size,
        ).load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["failure"] == ""
        vectors = np.zeros((len(ok), self.embedder.dim), dtype=np.float32)  # (rows, dim); failures stay zero
        if ok.any():
            vectors[ok] = self.embedder.embed_documents([str(text) for text in batch["text"][ok]])
        return {**batch, "vector": vectors}
