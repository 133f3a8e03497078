"""rag-ask: answer one question from the index in process, with the same pipeline rag-serve runs."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path

from pydantic import ValidationError

from rag.errors import EXIT_CODES, ExitCode, RagError, UsageError, error_message, exit_code

QUOTE_CHARS = 320  # of a quote printed under the answer: whole sentences around the answer, cuts marked

EPILOG = f"""\
examples:
  rag-ask --index .rag-sample "What company developed the most successful steam engine indicator?"
  rag-ask --index .rag-sample --retrieve-only "steam engine efficiency"   passages only, no generation
  rag-ask --json "..."                                                    machine-readable answer
  rag-ask --index .rag-sample --collection legal "..."                   answer from another collection

{EXIT_CODES}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rag-ask", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("question", help="the question")
    parser.add_argument("--index", type=Path, help="index folder (default: settings index.path)")
    parser.add_argument("--collection", metavar="NAME", default="default",
                        help="the collection under --index to answer from (default: 'default'; exit 3 if none)")
    parser.add_argument("--top-k", type=int, help="passages handed to the generator")
    parser.add_argument("--retrieve-only", action="store_true", help="print the retrieved passages, do not generate")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)

    from rag.collections import (
        CollectionNotFound, check_name, collection_exists, collection_names, collection_overrides,
    )
    from rag.answering.display import excerpt
    from rag.runtime import Runtime, quiet_libraries
    from rag.settings import Settings

    quiet_libraries()
    try:
        if not args.question.strip():
            raise UsageError("the question is empty")
        settings = Settings().with_overrides({"index": {"path": args.index}} if args.index else {})
        if not collection_exists(settings.index.path, check_name(args.collection)):
            raise CollectionNotFound(
                f"no collection {args.collection!r} under {settings.index.path}: the collections are "
                f"{', '.join(collection_names(settings.index.path)) or 'none'}"
            )
        settings = settings.with_overrides(collection_overrides(settings, args.collection))
        # create_index=False: a missing index is reported (exit 3) before any model loads
        runtime = Runtime(settings).start(with_generator=not args.retrieve_only, create_index=False)
    except (RagError, ValidationError) as exc:
        print(f"rag-ask: error: {error_message(exc)}", file=sys.stderr)
        return exit_code(exc)
    with runtime:
        if args.retrieve_only:
            print(_passages(runtime.retriever.retrieve(args.question, args.top_k), args.json))
            return ExitCode.OK
        answer = asyncio.run(runtime.answers.answer(args.question, args.top_k))
    if args.json:
        print(json.dumps(asdict(answer), indent=2))
    else:
        print(("Abstained: " if answer.abstained else "") + answer.text)
        if answer.confidence is not None:
            print(f"  (confidence {answer.confidence:.2f})")
        if answer.reason:
            print(f"  ({answer.reason})")
        if answer.unquoted_figures:
            print(f"  (figures not in the quotes, check them: {', '.join(answer.unquoted_figures)})")
        if answer.calculation is not None:
            calc = answer.calculation
            inputs = ", ".join(f"{i.written} ({i.document} p. {i.page})" for i in calc.inputs if i.document)
            print(f"  (computed: {calc.expression} = {calc.result}; inputs: {inputs})")
        elif answer.calculation_refused:
            print(f"  (calculation not computed: {answer.calculation_refused})")
        label = "Nearest evidence (not sources)" if answer.abstained else "Quotes"
        print(f"{label}:")
        for q in answer.quotes:
            pages = f"p. {q.page_start}" if q.page_start == q.page_end else f"pp. {q.page_start}-{q.page_end}"
            shown = excerpt(q.text, "" if answer.abstained else answer.text, QUOTE_CHARS)
            print(f"  - {q.document}, {pages}: \"{shown}\"")
        if not answer.quotes:  # an abstention's nearest passages, under the label above
            for c in answer.nearest if answer.abstained else answer.citations:
                pages = f"p. {c.page_start}" if c.page_start == c.page_end else f"pp. {c.page_start}-{c.page_end}"
                print(f"  - {c.document}, {pages}: \"{c.snippet}\"")
    return ExitCode.ABSTAINED if answer.abstained else ExitCode.OK


def _passages(passages: list, as_json: bool) -> str:
    rows = [
        {"document": p.chunk.document, "pages": [p.chunk.page_start, p.chunk.page_end],
         "cosine": round(p.dense_score or 0.0, 3), "text": p.chunk.text}
        for p in passages
    ]
    if as_json:
        return json.dumps(rows, indent=2)
    return "\n\n".join(
        f"[{i}] {r['document']} p.{r['pages'][0]}-{r['pages'][1]} (cosine {r['cosine']})\n{r['text']}"
        for i, r in enumerate(rows, start=1)
    )


if __name__ == "__main__":
    sys.exit(main())
