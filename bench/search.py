"""Vector search: exact (flat) vs IVF vs HNSW, CPU vs GPU, through our ``rag.indexing.vector_index.VectorIndex``.

Data: synthetic unit vectors with cluster structure, not real embeddings. ``--clusters`` centres are drawn
uniformly on the unit sphere; each vector is a random centre plus Gaussian noise of total norm about
``--noise`` (default 0.7, so a vector's cosine to its own centre is about 0.8 and to a random other vector
about 0), then normalised. Queries are fresh draws from the same mixture, never database vectors. Seeded, so
every run searches the same data.

For each size, kind (flat, ivf, hnsw) and device (cpu; gpu when ``rag.indexing.vector_index.gpu_count() > 0``):
build seconds (``VectorIndex.build``), queries/s at batch 1 and at batch ``--batch`` (256), p50/p95 latency
per query at batch 1, and recall@10 against the exact CPU search of the same queries. IVF and HNSW take
their parameters from ``IndexSettings`` (nlist 4*sqrt(n), nprobe 32; M 32, efSearch 128) unless overridden.
GPU rows search a copy made by ``VectorIndex`` on its first search (fp16 for flat); that copy's seconds are
reported apart. faiss has no GPU HNSW, so VectorIndex keeps HNSW on the CPU and that row is "n/a".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import fmt, machine_info, parse_int_list, percentiles, print_header, write_json

EPILOG = """\
examples:
  python -m bench.search --json bench-out/search.json                 100K and 1M vectors, every kind
  python -m bench.search --sizes 1000000 --kinds flat,ivf               skip the slow HNSW build
  python -m bench.search --quick                                        2,000 vectors (smoke test)

exit codes: 0 done; 2 usage error.
"""

K = 10
QUICK_SIZES = [2000]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.search", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", type=parse_int_list, default=[100_000, 1_000_000],
                        help="database sizes, comma-separated (default 100000,1000000)")
    parser.add_argument("--dim", type=int, default=384, help="vector dimension (default 384, MiniLM's)")
    parser.add_argument("--kinds", default="flat,ivf,hnsw", help="index kinds, comma-separated (default all)")
    parser.add_argument("--queries", type=int, default=1024, help="queries for batched search and recall")
    parser.add_argument("--batch1-queries", type=int, default=200,
                        help="queries searched one at a time (default 200)")
    parser.add_argument("--batch", type=int, default=256, help="queries per call in the batched run")
    parser.add_argument("--clusters", type=int, default=1000, help="mixture components of the synthetic data")
    parser.add_argument("--noise", type=float, default=0.7, help="noise norm around a centre (default 0.7)")
    parser.add_argument("--nprobe", type=int, help="IVF lists per query (default: settings, 32)")
    parser.add_argument("--ef-search", type=int, help="HNSW search breadth (default: settings, 128)")
    parser.add_argument("--threads", type=int,
                        help="faiss OpenMP threads (default: faiss's, one per core); batch-1 search on a loaded "
                        "machine can be much faster with 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="2,000 vectors, 64 queries, 20 at batch 1 (smoke test)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ("flat", "ivf", "hnsw")]
    if bad or not kinds:
        parser.error(f"--kinds takes flat, ivf, hnsw; got {args.kinds!r}")
    if args.quick:
        args.sizes, args.queries, args.batch1_queries = QUICK_SIZES, 64, 20
    for name in ("dim", "queries", "batch1_queries", "batch", "clusters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.noise < 0:
        parser.error("--noise must be >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")

    from rag.settings import IndexSettings
    from rag.indexing.vector_index import gpu_count

    info = machine_info()
    print_header("vector search: flat vs IVF vs HNSW, CPU vs GPU", info)
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    print(f"data: synthetic clustered unit vectors, dim {args.dim}, {args.clusters} clusters, noise {args.noise}, "
          f"seed {args.seed}; {args.queries} queries ({args.batch1_queries} at batch 1), k={K}; "
          f"faiss threads {faiss.omp_get_max_threads()}")
    overrides = {k: v for k, v in (("ivf_nprobe", args.nprobe), ("hnsw_ef_search", args.ef_search)) if v is not None}
    base = IndexSettings(use_gpu="never", **overrides)
    print(f"settings: nlist {'4*sqrt(n)' if not base.ivf_nlist else base.ivf_nlist}, nprobe {base.ivf_nprobe}, "
          f"hnsw M {base.hnsw_m}, efSearch {base.hnsw_ef_search}")
    gpus = gpu_count()
    if not gpus:
        print("GPU rows: skipped: no GPU")
    print(flush=True)

    rows = []
    for n in args.sizes:
        rng = np.random.default_rng(args.seed)
        centres = _unit(rng.standard_normal((args.clusters, args.dim), dtype=np.float32))
        started = time.perf_counter()
        data = _mixture(rng, centres, n, args.noise)  # (n, dim)
        queries = _mixture(np.random.default_rng(args.seed + 1), centres, args.queries, args.noise)  # (q, dim)
        print(f"-- {n:,} vectors ({data.nbytes / 2**30:.2f} GiB) generated in {time.perf_counter() - started:.1f} s",
              flush=True)
        ids = np.arange(n, dtype=np.int64)
        truth = None  # exact top-k ids per query, from the CPU flat index
        for kind in _ordered(kinds):
            settings = _with(base, kind=kind)
            started = time.perf_counter()
            index = _build(ids, data, settings, args.dim, kind)
            build_s = time.perf_counter() - started
            if truth is None:
                truth = (index if kind == "flat" else _build(ids, data, _with(settings, kind="flat"),
                                                             args.dim, "flat")).search(queries, K)[1]
            row = _measure(index, queries, truth, args)
            rows.append({"size": n, "kind": index.kind, "device": "cpu", "build_s": build_s, **row})
            _print_row(rows[-1])
            if gpus and kind == "hnsw":
                rows.append({"size": n, "kind": "hnsw", "device": "gpu", "skipped": "faiss has no GPU HNSW"})
                _print_row(rows[-1])
            elif gpus:
                # The same built index with GPU search allowed: VectorIndex copies it on the next search.
                index.settings = _with(settings, use_gpu="auto")
                started = time.perf_counter()
                index.search(queries[:1], K)
                copy_s = time.perf_counter() - started
                if not index.on_gpu:
                    rows.append({"size": n, "kind": kind, "device": "gpu", "skipped": "copy to GPU failed (see log)"})
                else:
                    row = _measure(index, queries, truth, args)
                    rows.append({"size": n, "kind": kind, "device": "gpu", "build_s": build_s,
                                 "gpu_copy_s": copy_s, **row})
                _print_row(rows[-1])
            del index
        if not gpus:
            rows.append({"size": n, "device": "gpu", "skipped": "no GPU"})
        del data
        print(flush=True)

    write_json(args.json, {
        "benchmark": "search", "machine": info, "k": K, "dim": args.dim,
        "data": {"kind": "synthetic clustered unit vectors", "clusters": args.clusters, "noise": args.noise,
                 "seed": args.seed, "queries": args.queries, "batch1_queries": args.batch1_queries,
                 "batch": args.batch},
        "faiss_threads": faiss.omp_get_max_threads(), "settings": base.model_dump(mode="json"), "rows": rows,
    })
    return 0


def _ordered(kinds: list[str]) -> list[str]:
    """flat first: its results are the ground truth for the others."""
    return sorted(set(kinds), key=["flat", "ivf", "hnsw"].index)


def _build(ids: np.ndarray, data: np.ndarray, settings, dim: int, kind: str):
    from rag.indexing.vector_index import VectorIndex

    index = VectorIndex.build(ids, data, settings, dim)
    if index.kind != kind:  # VectorIndex falls back to flat when there are too few vectors to train IVF
        print(f"   note: VectorIndex built {index.kind!r} for kind={kind!r} at n={len(ids)}")
    return index


def _measure(index, queries: np.ndarray, truth: np.ndarray, args) -> dict[str, Any]:
    """Batch-1 latency and QPS, batched QPS, recall@K against ``truth`` (q, K)."""
    index.search(queries[:1], K)  # warm-up (GPU kernels, thread pools)
    latencies = []
    single = queries[: args.batch1_queries]
    started = time.perf_counter()
    for q in single:
        t = time.perf_counter()
        index.search(q, K)
        latencies.append(time.perf_counter() - t)
    batch1_s = time.perf_counter() - started
    found = np.empty((len(queries), K), dtype=np.int64)
    started = time.perf_counter()
    for start in range(0, len(queries), args.batch):
        _, ids = index.search(queries[start : start + args.batch], K)
        found[start : start + len(ids)] = ids
    batched_s = time.perf_counter() - started
    ms = percentiles([x * 1000 for x in latencies], (50, 95))
    return {
        "qps_batch1": len(single) / batch1_s, "p50_ms_batch1": ms["p50"], "p95_ms_batch1": ms["p95"],
        "qps_batched": len(queries) / batched_s, "batch": args.batch, "recall_at_10": _recall(found, truth),
    }


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the exact top-K found, per query."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def _mixture(rng: np.random.Generator, centres: np.ndarray, n: int, noise: float, block: int = 65536) -> np.ndarray:
    """(n, dim) float32 unit vectors: a random centre each plus noise of norm ~``noise``, normalised."""
    dim = centres.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(start + block, n)
        picks = rng.integers(0, len(centres), size=stop - start)
        out[start:stop] = centres[picks] + rng.standard_normal((stop - start, dim), dtype=np.float32) * (
            noise / np.sqrt(dim)
        )
    return _unit(out)


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _print_row(row: dict[str, Any]) -> None:
    label = f"{row['size']:>10,} {row.get('kind', '-'):5} {row['device']:4}"
    if "skipped" in row:
        print(f"{label}  skipped: {row['skipped']}")
        return
    copy = f", GPU copy {row['gpu_copy_s']:.2f} s" if "gpu_copy_s" in row else ""
    print(f"{label}  build {fmt(row['build_s'], 2)} s{copy} | batch 1: {fmt(row['qps_batch1'])} q/s, "
          f"p50 {fmt(row['p50_ms_batch1'], 3)} ms, p95 {fmt(row['p95_ms_batch1'], 3)} ms | batch {row['batch']}: "
          f"{fmt(row['qps_batched'])} q/s | recall@10 {row['recall_at_10']:.4f}", flush=True)


def _with(settings: Any, **values: Any) -> Any:
    """A copy of a settings section with ``values``, validated again (never assigned after validation)."""
    return type(settings).model_validate({**settings.model_dump(), **values})


if __name__ == "__main__":
    sys.exit(main())
