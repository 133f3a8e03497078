"""Ingest throughput: our pipeline against the LangChain baseline on the same PDFs, back to back.

For each ``--docs`` folder (a corpus), in one process with one loaded MiniLM embedder shared by both:

1. ours: ``Ingestor.sync_folder`` into a fresh temporary index (parse and chunk in worker processes, embed
   in batches, commit SQLite + FAISS), then a second, unchanged rerun (content hashes only).
2. ours, stages: the pipeline's parse tasks (page ranges of ``ingest.pages_per_task`` pages) and then its chunk
   tasks (one per document) run alone in the same worker pool, each phase timed on its own.
   Embed and index seconds come from the pipeline's own ``IngestReport.stage_seconds``.
3. baseline: ``PyPDFLoader`` per file, ``RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)``,
   ``FAISS.from_documents`` with the same embedder behind LangChain's ``Embeddings`` interface
   (``rag.evaluation.baseline``), in one process as the LangChain docs do it. Its embed seconds are timed
   inside the adapter; index = ``from_documents`` minus embed.
4. parse-only ceiling: pypdf ``extract_text`` alone, every page, in a process pool over page ranges (not
   whole files), so no single large PDF holds the pool up.
5. with ``--engine ray``: ours again on the Ray engine (``rag.ingestion.ray_engine``) into another fresh index,
   right after the local run, then its unchanged rerun; the overhead ratio is local pages/s over Ray pages/s.
   Ray is started (or joined, ``--ray-address``) before the clock starts and its start time printed apart;
   the embedding actors load the model inside the timed run, once per run, as rag-ingest does.

Model loading is timed apart and excluded from every figure; the PDFs are read once first so that neither
pipeline pays for a cold page cache. Pages/s are pages successfully extracted per wall-clock second.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bench._common import fmt, machine_info, print_header, write_json

EPILOG = """\
examples:
  python -m bench.ingest --docs ../shared/eval/sec10q-dev/docs --docs bench-out/manuals --json bench-out/ingest.json
  python -m bench.ingest --docs ../shared/eval/sec10q-dev/docs --quick 2     first 2 files only (smoke test)
  python -m bench.ingest --docs bench-out/manuals --workers 16 --skip-baseline
  python -m bench.ingest --docs ../shared/eval/sec10q-dev/docs --engine ray --skip-baseline --skip-stages
                                                   local and Ray engines back to back, with the overhead ratio

bench-out/manuals comes from `bash bench/fetch_manuals.sh`. Settings (RAG_*) apply to our pipeline as to
rag-ingest. exit codes: 0 done; 2 usage error (missing folder, no PDFs, bad argument).
"""

QUICK_FILES = 2
CEILING_PAGES_PER_TASK = 32


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--docs", type=Path, action="append", required=True, metavar="DIR",
                        help="folder of PDFs (recursive); repeat for several corpora")
    parser.add_argument("--workers", type=int, help="parsing processes (default: settings ingest.workers, "
                        "0 = one per core)")
    parser.add_argument("--quick", type=int, nargs="?", const=QUICK_FILES, metavar="N",
                        help=f"only the first N files of each corpus, sorted by path (default N: {QUICK_FILES})")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures to this JSON file")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run the LangChain baseline")
    parser.add_argument("--skip-stages", action="store_true", help="do not split parse and chunk (saves a parse)")
    parser.add_argument("--skip-ceiling", action="store_true", help="do not measure the pypdf-only ceiling")
    parser.add_argument("--ceiling-pages-per-task", type=int, default=CEILING_PAGES_PER_TASK, metavar="N",
                        help=f"pages per pool task in the ceiling (default {CEILING_PAGES_PER_TASK})")
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="ray: also run our pipeline on the Ray engine, after the local one (needs .[ray])")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="with --engine ray: a Ray cluster to use (default: a private instance with "
                        "--workers CPUs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.quick is not None and args.quick < 1:
        parser.error(f"--quick must be >= 1, got {args.quick}")
    if args.ceiling_pages_per_task < 1:
        parser.error("--ceiling-pages-per-task must be >= 1")
    if args.ray_address and args.engine != "ray":
        parser.error("--ray-address needs --engine ray")
    corpora = []
    for docs in args.docs:
        files = _pdfs(docs)
        if not files:
            parser.error(f"no PDF files under {docs} (for the manuals corpus run `bash bench/fetch_manuals.sh`)")
        corpora.append((docs, files[: args.quick] if args.quick else files))

    from rag.runtime import build_embedder, quiet_libraries
    from rag.settings import Settings

    quiet_libraries()
    info = machine_info()
    print_header("ingest: ours vs LangChain baseline", info)
    settings = Settings().with_overrides({} if args.workers is None else {"ingest": {"workers": args.workers}})
    workers = settings.ingest.workers or os.cpu_count() or 1

    started = time.perf_counter()
    embedder = build_embedder(settings).load()
    embedder_path = embedder.model_path
    embedder.embed_documents(["warm-up passage"] * 8)  # first-call allocations stay out of the timed runs
    load_s = time.perf_counter() - started
    print(f"embedder {settings.models.embedder} on {embedder.device}: loaded in {load_s:.1f} s (excluded); "
          f"batch {embedder.batch_size}; workers {workers}\n", flush=True)
    ray_info = _start_ray(settings, args.ray_address, workers) if args.engine == "ray" else None

    results = []
    for docs, files in corpora:
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            view = _view(files, docs, Path(tmp) / "docs")
            _warm_page_cache(files)
            corpus: dict[str, Any] = {
                "docs": str(docs), "files": len(files), "bytes": sum(f.stat().st_size for f in files),
            }
            print(f"-- corpus {docs}: {len(files)} files, {corpus['bytes'] / 2**20:.1f} MB", flush=True)
            corpus["ours"] = run_ours(settings, embedder, embedder_path, view, Path(tmp) / "index")
            if ray_info is not None:
                corpus["ours_ray"] = run_ours(settings, embedder, embedder_path, view, Path(tmp) / "index-ray", "ray")
                corpus["ours_ray"]["same_chunks_as_local"] = _same_chunks(Path(tmp) / "index", Path(tmp) / "index-ray",
                                                                         settings)
                if corpus["ours_ray"]["pages_per_s"]:
                    corpus["overhead_local_over_ray"] = corpus["ours"]["pages_per_s"] / corpus["ours_ray"]["pages_per_s"]
            if not args.skip_stages:
                corpus["ours"]["stages_isolated"] = run_stage_split(settings, embedder_path, files, workers)
            if not args.skip_baseline:
                corpus["baseline"] = run_baseline(view, embedder, embedder_path)
            if not args.skip_ceiling:
                corpus["ceiling"] = run_ceiling(files, workers, args.ceiling_pages_per_task)
            corpus["pages"] = corpus["ours"]["pages"]
            if "baseline" in corpus and corpus["baseline"]["pages_per_s"]:
                corpus["ratio_ours_over_baseline"] = corpus["ours"]["pages_per_s"] / corpus["baseline"]["pages_per_s"]
            print_corpus(corpus)
        results.append(corpus)

    write_json(args.json, {
        "benchmark": "ingest", "machine": info, "embedder": settings.models.embedder, "embed_device": embedder.device,
        "embedder_load_s": load_s, "workers": workers, "ray": ray_info, "corpora": results,
    })
    if ray_info is not None:
        import ray

        ray.shutdown()
    return 0


def _start_ray(settings, address: str | None, workers: int) -> dict[str, Any]:
    """Start a private Ray instance with ``workers`` CPUs, or join ``address``; what the cluster has."""
    import ray

    from rag.ingestion.ray_engine import start_ray

    settings.ingest.ray_address = address
    started = time.perf_counter()
    start_ray(settings, num_cpus=None if address else workers)
    info = {"address": address or "private instance", "start_s": time.perf_counter() - started,
            "resources": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")},
            "nodes": len(ray.nodes()), "version": ray.__version__}
    print(f"ray {info['version']}: {info['address']}, {info['nodes']} node(s), {info['resources'].get('CPU', 0):g} CPUs, "
          f"{info['resources'].get('GPU', 0):g} GPUs; started in {info['start_s']:.1f} s (excluded)\n", flush=True)
    return info


def _same_chunks(local_index: Path, ray_index: Path, settings) -> bool:
    """Whether both indexes hold the same chunks (text, pages, offsets, hashes) and vectors within 1e-5."""
    import numpy as np

    from rag.indexing.index import DocumentIndex

    def contents(path: Path):
        index = DocumentIndex.open(path, settings.index)
        try:
            chunks = sorted(index.store.all_chunks(), key=lambda c: (c.document, c.position))
            ids, vectors = index.store.all_vectors(index.profile.dim)
            by_id = dict(zip(ids.tolist(), vectors))
            return ([(c.document, c.position, c.page_start, c.page_end, c.char_start, c.char_end, c.content_hash,
                      c.text) for c in chunks], np.stack([by_id[c.id] for c in chunks]) if chunks else None)
        finally:
            index.close()

    (local_chunks, local_vectors), (ray_chunks, ray_vectors) = contents(local_index), contents(ray_index)
    if local_chunks != ray_chunks:
        return False
    return local_vectors is None or bool(np.allclose(local_vectors, ray_vectors, atol=1e-5))


# ------------------------------------------------------------------------------------------------ ours


def run_ours(settings, embedder, embedder_path: str, docs: Path, index_dir: Path, engine: str = "local") -> dict[str, Any]:
    """Our ingest on ``engine`` into a fresh index, then an unchanged rerun; stage seconds from the IngestReport."""
    from rag.ingestion.chunking import token_counter
    from rag.indexing.index import DocumentIndex
    from rag.runtime import Runtime

    settings = settings.with_overrides({"index": {"path": index_dir}, "ingest": {"engine": engine}})

    def sync() -> tuple[Any, float]:
        started = time.perf_counter()
        with Runtime(settings, embedder=embedder).start_ingest() as runtime:
            report = runtime.documents.sync_folder(docs)
        return report, time.perf_counter() - started

    first, wall = sync()
    rerun, rerun_wall = sync()
    index = DocumentIndex.open(index_dir, settings.index)
    try:
        texts = [c.text for c in index.store.all_chunks()]
    finally:
        index.close()
    stages = dict(first.stage_seconds)
    tokens = _model_tokens(token_counter(embedder_path), texts, embedder.max_tokens)
    return {
        "pages": first.pages, "files_ingested": first.new + first.changed,  # failures are counted in neither
        "failed": [f"{f.path}: {f.reason}" for f in first.failed], "chunks": first.chunks_added,
        "seconds": wall, "pages_per_s": first.pages / wall if wall else 0.0,
        # parse_chunk is the wall time of the parse generator, which includes the time the main process spent
        # embedding (and committing) between two results: it overlaps "embed" and does not add up with it.
        "stage_seconds": stages,
        "embed_tokens": tokens,
        "embed_tokens_per_s": tokens / stages["embed"] if stages.get("embed") else None,
        "embed_chunks_per_s": first.chunks_added / stages["embed"] if stages.get("embed") else None,
        "rerun_seconds": rerun_wall, "rerun_unchanged": rerun.unchanged,
    }


def run_stage_split(settings, embedder_path: str, files: list[Path], workers: int) -> dict[str, Any]:
    """Parse, then chunk, alone, in a pool like the pipeline's: the parse phase runs the pipeline's page-range
    tasks (``ingest.pages_per_task``), the chunk phase one task per document; each phase is timed on its own."""
    from rag.ingestion.ingestor import PARALLEL_MIN_BYTES

    n = min(workers, len(files))
    if sum(f.stat().st_size for f in files) < PARALLEL_MIN_BYTES:
        n = 1  # the pipeline parses small inputs in-process too
    per_task = settings.ingest.pages_per_task if n > 1 else 1 << 30  # in-process: whole files
    counts = {path: _page_count(path) for path in files}  # not timed
    _reader_cache.clear()
    tasks = [
        (path, start, start + per_task)
        for path, count in sorted(counts.items(), key=lambda item: item[1], reverse=True)
        for start in range(0, max(count, 1), per_task)
    ]
    if n <= 1:
        _stage_worker_init(embedder_path, settings)
        started = time.perf_counter()
        parts = [_stage_parse(task) for task in tasks]
        parsed_at = time.perf_counter()
        chunked = [_stage_chunk(doc) for doc in _stage_docs(tasks, parts)]
        finished = time.perf_counter()
    else:
        with ProcessPoolExecutor(n, mp_context=get_context("spawn"), initializer=_stage_worker_init,
                                 initargs=(embedder_path, settings)) as pool:
            list(pool.map(_stage_noop, range(n)))  # workers up before the clock starts
            started = time.perf_counter()
            parts = list(pool.map(_stage_parse, tasks))
            parsed_at = time.perf_counter()
            chunked = list(pool.map(_stage_chunk, _stage_docs(tasks, parts)))
            finished = time.perf_counter()
    pages = sum(pages for pages, _ in chunked)
    return {
        "workers": n, "tasks": len(tasks), "pages_per_task": per_task if n > 1 else None, "pages": pages,
        "chunks": sum(c for _, c in chunked),
        "parse_s": parsed_at - started, "chunk_s": finished - parsed_at,
    }


_stage_state: dict[str, Any] = {}


def _stage_worker_init(embedder_path: str, settings) -> None:
    from rag.ingestion.chunking import Chunker

    from rag.ingestion.pdf_parsing import LastOpenPdf

    _stage_state["chunker"] = Chunker(embedder_path, settings.chunking).load()
    _stage_state["settings"] = settings
    _stage_state["open"] = LastOpenPdf(settings.ingest)  # as the pipeline's workers keep one file open


def _stage_noop(_: int) -> None:
    return None


def _stage_parse(task: tuple[Path, int, int]):
    """One range task, as the pipeline's workers run it; None for a file that cannot be read."""
    from rag.errors import PdfError

    path, start, stop = task
    try:
        return _stage_state["open"].get(path).read(start, stop)
    except PdfError:
        return None


def _stage_docs(tasks, parts) -> list[tuple[Path, list]]:
    """The ranges grouped per readable file, in task order."""
    grouped: dict[Path, list] = {}
    for (path, _, _), part in zip(tasks, parts):
        grouped.setdefault(path, []).append(part)
    return [(path, ranges) for path, ranges in grouped.items() if all(r is not None for r in ranges)]


def _stage_chunk(doc: tuple[Path, list]) -> tuple[int, int]:
    """(pages, chunks) of one document: its ranges joined, then chunked; (0, 0) when it is refused."""
    from rag.errors import PdfError
    from rag.ingestion.pdf_parsing import assemble_document

    path, ranges = doc
    try:
        document = assemble_document(path, ranges[0].content_hash, ranges, _stage_state["settings"].ingest)
    except PdfError:
        return 0, 0
    return len(document.pages), len(_stage_state["chunker"].chunk(document, path.name))


# -------------------------------------------------------------------------------------------- baseline


def run_baseline(docs: Path, embedder, embedder_path: str) -> dict[str, Any]:
    """The LangChain-docs ingest (rag.evaluation.baseline) with each stage timed."""
    from langchain_core.embeddings import Embeddings

    from rag.ingestion.chunking import token_counter
    from rag.evaluation.baseline import EmbedderAdapter, load_pages, split_pages

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # langchain-community's sunset notice
        import langchain_community.document_loaders  # noqa: F401 - imported before the clock starts
        from langchain_community.vectorstores import FAISS

    class TimedEmbeddings(Embeddings):
        """Counts the seconds FAISS.from_documents spends embedding."""

        def __init__(self, inner: Embeddings):
            self.inner = inner
            self.seconds = 0.0

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            started = time.perf_counter()
            try:
                return self.inner.embed_documents(texts)
            finally:
                self.seconds += time.perf_counter() - started

        def embed_query(self, text: str) -> list[float]:
            return self.inner.embed_query(text)

    embeddings = TimedEmbeddings(EmbedderAdapter(embedder))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pages = load_pages(docs)
    t1 = time.perf_counter()
    chunks = split_pages(pages)
    t2 = time.perf_counter()
    FAISS.from_documents(chunks, embeddings)
    t3 = time.perf_counter()
    tokens = _model_tokens(token_counter(embedder_path), [c.page_content for c in chunks], embedder.max_tokens)
    total = t3 - t0
    embed = embeddings.seconds
    return {
        "pages": len(pages), "chunks": len(chunks), "seconds": total,
        "pages_per_s": len(pages) / total if total else 0.0,
        "stage_seconds": {"parse": t1 - t0, "chunk": t2 - t1, "embed": embed, "index": (t3 - t2) - embed},
        "embed_tokens": tokens, "embed_tokens_per_s": tokens / embed if embed else None,
        "embed_chunks_per_s": len(chunks) / embed if embed else None,
    }


# ---------------------------------------------------------------------------------------------- ceiling


def run_ceiling(files: list[Path], workers: int, pages_per_task: int) -> dict[str, Any]:
    """pypdf alone on every page, ``workers`` processes, tasks of ``pages_per_task`` pages."""
    counts = {path: _page_count(path) for path in files}  # not timed
    tasks = [
        (path, start, min(start + pages_per_task, n))
        for path, n in sorted(counts.items(), key=lambda item: item[1], reverse=True)
        for start in range(0, n, pages_per_task)
    ]
    started = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        done = list(pool.map(_extract_range, tasks))
    wall = time.perf_counter() - started
    pages = sum(ok for ok, _ in done)
    return {
        "workers": workers, "tasks": len(tasks), "pages_per_task": pages_per_task, "pages": pages,
        "pages_failed": sum(bad for _, bad in done), "seconds": wall, "pages_per_s": pages / wall if wall else 0.0,
    }


_reader_cache: dict[str, Any] = {}


def _open_reader(path: Path):
    import pypdf

    key = str(path)
    if key not in _reader_cache:
        _reader_cache.clear()  # one open file per worker: tasks come grouped by file
        _reader_cache[key] = pypdf.PdfReader(key, strict=False)
    return _reader_cache[key]


def _page_count(path: Path) -> int:
    import logging

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        with _pypdf_limits():
            return len(_open_reader(path).pages)
    except Exception:  # noqa: BLE001 - a broken file counts as no pages here
        return 0


def _extract_range(task: tuple[Path, int, int]) -> tuple[int, int]:
    """(pages extracted, pages that raised) for pages [start, stop) of one PDF."""
    import logging

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    path, start, stop = task
    ok = bad = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _pypdf_limits():
            reader = _open_reader(path)
            for number in range(start, stop):
                try:
                    reader.pages[number].extract_text()
                    ok += 1
                except Exception:  # noqa: BLE001 - count and go on, as our parser does
                    bad += 1
    return ok, bad


def _pypdf_limits():
    """The array limit rag.ingestion.pdf_parsing reads with (real 10-Q filings exceed pypdf's default); a context
    manager, as pypdf's configuration is."""
    import pypdf

    from rag.ingestion.pdf_parsing import ARRAY_LIMIT

    return pypdf.apply_configuration(array_maximum_element_count=ARRAY_LIMIT)


# ----------------------------------------------------------------------------------------------- helpers


def _pdfs(docs: Path) -> list[Path]:
    if not docs.is_dir():
        return []
    return sorted(p for p in docs.rglob("*") if p.is_file() and p.suffix.lower() == ".pdf")


def _view(files: list[Path], root: Path, view: Path) -> Path:
    """A flat folder of symlinks to ``files``, the one input both pipelines read (the baseline's loader
    does not recurse); names from nested folders are joined with "__"."""
    view.mkdir(parents=True)
    for path in files:
        name = path.relative_to(root).as_posix().replace("/", "__")
        (view / name).symlink_to(path.resolve())
    return view


def _warm_page_cache(files: list[Path]) -> None:
    for path in files:
        with open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass


def _model_tokens(count, texts: list[str], max_tokens: int) -> int:
    """Tokens the embedder processes: each text's tokens plus [CLS] and [SEP], cut at its limit."""
    return sum(min(count(text) + 2, max_tokens) for text in texts)


def print_corpus(corpus: dict[str, Any]) -> None:
    """One table per corpus: seconds and pages/s end to end and per stage, both pipelines."""
    ours, base = corpus["ours"], corpus.get("baseline")
    pages = ours["pages"]
    print(f"pages: {pages} (ours)" + (f", {base['pages']} (baseline)" if base else "")
          + f"; chunks: {ours['chunks']} (ours)" + (f", {base['chunks']} (baseline)" if base else ""))
    if ours["failed"]:
        print(f"failed (ours): {'; '.join(ours['failed'])}")
    print(f"{'':34}{'seconds':>10}{'pages/s':>10}")

    def row(label: str, seconds: float | None, n: int, extra: str = "") -> None:
        rate = n / seconds if seconds else None
        print(f"{label:34}{fmt(seconds, 2):>10}{fmt(rate):>10}  {extra}")

    stages = ours["stage_seconds"]
    row("ours end to end", ours["seconds"], pages)
    split = ours.get("stages_isolated")
    if split:
        tasks = f"{split['tasks']} tasks of <= {split['pages_per_task']} pages" if split["pages_per_task"] else "in-process"
        row("  parse (alone, same pool)", split["parse_s"], split["pages"], tasks)
        row("  chunk (alone, same pool)", split["chunk_s"], split["pages"], "one task per document")
    row("  parse+chunk (in pipeline)", stages.get("parse_chunk"), pages, "overlaps embed")
    row("  embed", stages.get("embed"), pages,
        f"{fmt(ours['embed_tokens_per_s'], 0)} tokens/s, {fmt(ours['embed_chunks_per_s'])} chunks/s")
    row("  index (SQLite + FAISS commit)", stages.get("index"), pages)
    print(f"{'ours rerun, unchanged':34}{fmt(ours['rerun_seconds'], 3):>10}{'':>10}  "
          f"{ours['rerun_unchanged']} files unchanged")
    if base:
        bs = base["stage_seconds"]
        row("baseline end to end", base["seconds"], base["pages"])
        row("  parse (PyPDFLoader)", bs["parse"], base["pages"])
        row("  chunk (1000/200 chars)", bs["chunk"], base["pages"])
        row("  embed", bs["embed"], base["pages"],
            f"{fmt(base['embed_tokens_per_s'], 0)} tokens/s, {fmt(base['embed_chunks_per_s'])} chunks/s")
        row("  index (FAISS.from_documents)", bs["index"], base["pages"])
    if "ratio_ours_over_baseline" in corpus:
        print(f"ratio ours/baseline (pages/s end to end): {corpus['ratio_ours_over_baseline']:.2f}x")
    on_ray = corpus.get("ours_ray")
    if on_ray:
        rs = on_ray["stage_seconds"]
        row("ours on Ray end to end", on_ray["seconds"], on_ray["pages"],
            f"{on_ray['chunks']} chunks; same chunks and vectors as local: {on_ray['same_chunks_as_local']}")
        row("  Ray pipeline (parse+chunk+embed)", rs.get("ray_pipeline"), on_ray["pages"],
            "streamed to the driver; includes the actors' model load")
        row("  index (SQLite + FAISS commit)", rs.get("index"), on_ray["pages"])
        print(f"{'ours on Ray rerun, unchanged':34}{fmt(on_ray['rerun_seconds'], 3):>10}{'':>10}  "
              f"{on_ray['rerun_unchanged']} files unchanged")
        if "overhead_local_over_ray" in corpus:
            print(f"overhead local/Ray (pages/s end to end): {corpus['overhead_local_over_ray']:.2f}x")
    ceiling = corpus.get("ceiling")
    if ceiling:
        print(f"parse-only ceiling (pypdf, {ceiling['workers']} processes, {ceiling['pages_per_task']}-page tasks): "
              f"{fmt(ceiling['pages_per_s'])} pages/s ({ceiling['pages']} pages in {ceiling['seconds']:.2f} s)")
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())
