"""rag-ask: answer one question from the index in process, with the same pipeline rag-serve runs."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path

from pydantic import ValidationError

from rag.errors import RagError

EPILOG = """\
examples:
  rag-ask --index .rag-sample "What company developed the most successful steam engine indicator?"
  rag-ask --index .rag-sample --retrieve-only "steam engine efficiency"   passages only, no generation
  rag-ask --json "..."                                                    machine-readable answer

exit codes: 0 answered; 3 abstained (the documents do not answer it); 2 usage error or missing index/model
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rag-ask", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("question", help="the question")
    parser.add_argument("--index", type=Path, help="index folder (default: settings index.path)")
    parser.add_argument("--top-k", type=int, help="passages handed to the generator")
    parser.add_argument("--retrieve-only", action="store_true", help="print the retrieved passages, do not generate")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)

    from rag.runtime import Runtime, quiet_libraries
    from rag.indexing.index import DocumentIndex
    from rag.settings import Settings

    quiet_libraries()
    try:
        settings = Settings()
        if args.index:
            settings.index.path = args.index
        if not args.question.strip():
            raise RagError("the question is empty")
        DocumentIndex.open(settings.index.path, settings.index).close()  # IndexMissing with the fix, before loading models
        runtime = Runtime(settings).start(with_generator=not args.retrieve_only)
    except (RagError, ValidationError) as exc:
        print(f"rag-ask: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.retrieve_only:
            passages = runtime.retriever.retrieve(args.question, args.top_k)
            rows = [
                {"document": p.chunk.document, "pages": [p.chunk.page_start, p.chunk.page_end],
                 "cosine": round(p.dense_score or 0.0, 3), "text": p.chunk.text}
                for p in passages
            ]
            print(json.dumps(rows, indent=2) if args.json else "\n\n".join(
                f"[{i}] {r['document']} p.{r['pages'][0]}-{r['pages'][1]} (cosine {r['cosine']})\n{r['text']}"
                for i, r in enumerate(rows, start=1)))
            return 0
        answer = asyncio.run(runtime.answers.answer(args.question, args.top_k))
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(asdict(answer), indent=2))
    else:
        print(("Abstained: " if answer.abstained else "") + answer.text)
        if answer.confidence is not None:
            print(f"  (confidence {answer.confidence:.2f})")
        if answer.reason:
            print(f"  ({answer.reason})")
        label = "Nearest evidence (not sources)" if answer.abstained else "Quotes"
        print(f"{label}:")
        for q in answer.quotes:
            pages = f"p. {q.page_start}" if q.page_start == q.page_end else f"pp. {q.page_start}-{q.page_end}"
            print(f"  - {q.document}, {pages}: \"{q.text[:240].strip()}\"")
        if not answer.quotes:
            for c in answer.citations:
                pages = f"p. {c.page_start}" if c.page_start == c.page_end else f"pp. {c.page_start}-{c.page_end}"
                print(f"  - {c.document}, {pages}: \"{c.snippet[:160].strip()}...\"")
    return 3 if answer.abstained else 0


if __name__ == "__main__":
    sys.exit(main())
