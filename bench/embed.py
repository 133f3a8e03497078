"""Embedding throughput of the service's embedder (fp16 on CUDA) by batch size, on real passages.

Passages are our own chunks of the PDFs under ``--docs`` (``parse_pdf`` and ``Chunker`` with the default
chunking: 192 tokens, overlap 32), repeated in order up to ``--passages``. The embedder is built as
``rag.runtime.build_embedder`` builds it (device from ``models.device``; ``ingest.embed_batch_size`` 64 is the
batch the ingest uses); each ``--batch-sizes`` entry embeds every passage once after an untimed warm-up batch.
Tokens are what the model processes, as ``bench.ingest`` counts them: each passage's tokens plus [CLS] and [SEP],
cut at the model's limit.

    python -m bench.embed --docs bench-out/manuals --passages 8192 --batch-sizes 64,256,1024 --json out.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench._common import fmt, machine_info, parse_int_list, print_header, write_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit codes: 0 done; 2 usage error (no PDFs, no text, a bad number).")
    parser.add_argument("--docs", type=Path, required=True, help="folder of PDFs the passages are cut from")
    parser.add_argument("--passages", type=int, default=8192, help="passages embedded per batch size (default 8192)")
    parser.add_argument("--batch-sizes", type=parse_int_list, default=[64, 256, 1024],
                        help="batch sizes, comma-separated (default 64,256,1024; 64 is ingest.embed_batch_size)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    files = sorted(p for p in args.docs.rglob("*") if p.suffix.lower() == ".pdf" and p.is_file()) if (
        args.docs.is_dir()) else []
    if not files:
        parser.error(f"no PDF files under {args.docs}")
    if args.passages < 1:
        parser.error("--passages must be >= 1")

    from rag.ingestion.chunking import Chunker, token_counter
    from rag.ingestion.pdf_parsing import parse_pdf
    from rag.runtime import build_embedder, quiet_libraries
    from rag.settings import Settings

    quiet_libraries()
    info = machine_info()
    print_header("embedding throughput by batch size", info)
    settings = Settings()
    started = time.perf_counter()
    embedder = build_embedder(settings).load()
    load_s = time.perf_counter() - started

    started = time.perf_counter()
    chunker = Chunker(embedder.model_path, settings.chunking).load()
    texts: list[str] = []
    for path in files:
        texts += [chunk.text for chunk in chunker.chunk(parse_pdf(path, settings.ingest), path.name)]
        if len(texts) >= args.passages:
            break
    if not texts:
        parser.error(f"no text in the PDFs under {args.docs}")
    distinct = min(len(texts), args.passages)
    texts = [texts[i % len(texts)] for i in range(args.passages)]
    count = token_counter(embedder.model_path)
    tokens = sum(min(count(text) + 2, embedder.max_tokens) for text in texts)
    cut_s = time.perf_counter() - started
    dtype = str(next(embedder.model.parameters()).dtype).replace("torch.", "")
    print(f"embedder {settings.models.embedder} on {embedder.device} ({dtype}), loaded in {load_s:.1f} s; "
          f"{len(texts)} passages ({distinct} distinct, {tokens / len(texts):.0f} tokens each on average) cut "
          f"in {cut_s:.1f} s", flush=True)

    rows = []
    for batch in args.batch_sizes:
        embedder.embed_documents(texts[:batch], batch_size=batch)  # warm-up: allocations at this batch shape
        started = time.perf_counter()
        vectors = embedder.embed_documents(texts, batch_size=batch)  # numpy on return: the device is done
        seconds = time.perf_counter() - started
        rows.append({"batch_size": batch, "seconds": seconds, "tokens_per_s": tokens / seconds,
                     "passages_per_s": len(texts) / seconds, "shape": list(vectors.shape)})
        print(f"   batch {batch:>5}: {seconds:.2f} s, {fmt(tokens / seconds, 0)} tokens/s, "
              f"{fmt(len(texts) / seconds, 0)} passages/s", flush=True)
    write_json(args.json, {
        "benchmark": "embed", "machine": info, "device": embedder.device, "dtype": dtype, "load_s": load_s,
        "docs": str(args.docs), "passages": len(texts), "distinct_passages": distinct, "tokens": tokens,
        "ingest_batch_size": settings.ingest.embed_batch_size, "rows": rows,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
