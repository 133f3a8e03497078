"""Retrieval quality on a real question set, with retrieval settings switched one at a time.

    python -m bench.retrieval --set ../shared/eval/sec10q-dev --index .rag-eval/sec10q-dev/index
    python -m bench.retrieval --set ../shared/eval/squad2-dev --index .rag-eval/squad2-dev/index \\
        --variant focus=false --variant focus=false,title_match=false

Over the answerable questions of the set (the index must hold the set's docs/, e.g. from a rag-eval run), for
the default retrieval settings and each ``--variant`` (``field=value`` pairs of ``RetrievalSettings``): recall@1,
5 and 10 of the gold document and page (the document alone where the set gives no pages), the mean reciprocal
rank, the share of questions with a gold-document passage in the top 5 and the mean number of gold-document
passages among the top 5 (how much of the prompt comes from the right document). With the focus on, also how
many questions point at documents by name (``rag.answering.focus``) and how many of those include the gold
one. Only the embedder loads; no generation.

With ``--evidence`` (sets with span references, such as squad2-dev): for each configuration also the share of
questions whose reference span (SQuAD-normalised) is in the top ``retrieval.top_k`` passages and in the quoted
evidence the prompt would hold (``generation.evidence_sentences`` and ``evidence_tokens``, which ``--variant``
can switch too, counted with the generator's tokenizer, which then loads): what the generator can copy from.

exit codes: 0 ok; 2 usage error (a missing set or index, a bad variant)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import machine_info, print_header

EXIT_USAGE = 2


def parse_variant(text: str) -> dict[str, Any]:
    """``"focus=false,top_k=8"`` -> ``{"focus": False, "top_k": 8}`` (JSON-ish scalars)."""
    import json

    out: dict[str, Any] = {}
    for pair in filter(None, text.split(",")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"expected field=value, got {pair!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def measure(retriever, items, top: int = 10) -> dict[str, float]:
    """The figures of one retrieval configuration over ``items`` (answerable QAItems)."""
    from rag.evaluation.metrics import pages_meet, same_document

    ranks: list[int | None] = []
    gold_in_top5: list[int] = []
    pointed = pointed_right = 0
    for item in items:
        if retriever.settings.focus:
            named = retriever.focus_documents(item.question)
            pointed += bool(named)
            pointed_right += any(same_document(d, item.doc) for d in named)
        passages = retriever.retrieve(item.question, top)
        ranks.append(next((k for k, p in enumerate(passages, 1) if same_document(p.chunk.document, item.doc)
                           and pages_meet(p.chunk.page_start, p.chunk.page_end, item.pages)), None))
        gold_in_top5.append(sum(same_document(p.chunk.document, item.doc) for p in passages[:5]))
    recall = lambda k: float(np.mean([r is not None and r <= k for r in ranks]))  # noqa: E731
    return {
        "n": len(items), "recall@1": recall(1), "recall@5": recall(5), "recall@10": recall(10),
        "mrr": float(np.mean([1.0 / r if r else 0.0 for r in ranks])),
        "gold_doc_in_top5": float(np.mean([g > 0 for g in gold_in_top5])),
        "gold_doc_passages_of_5": float(np.mean(gold_in_top5)),
        "pointed": pointed, "pointed_right": pointed_right,
    }


def measure_evidence(retriever, embedder, count_tokens, items, generation) -> dict[str, float]:
    """Share of ``items`` whose reference span is in the top_k passages, and in the quotes the service would
    select from them (``rag.answering.evidence.quote_evidence``)."""
    from rag.answering.evidence import quote_evidence
    from rag.text import normalize_answer

    in_passages = in_quotes = with_figures = figure_in_passages = figure_in_quotes = 0
    for item in items:
        golds = [g for g in (normalize_answer(a) for a in item.answers) if g]
        passages = retriever.retrieve(item.question, retriever.settings.top_k)
        named = retriever.report_documents(item.question)  # as the service
        quotes = quote_evidence(item.question, passages, embedder, count_tokens, generation, named=named).quotes
        held = lambda texts: any(g in " ".join(normalize_answer(t) for t in texts) for g in golds)  # noqa: E731
        in_passages += held(p.chunk.text for p in passages)
        in_quotes += held(q.text for q in quotes)
        wanted = reference_figures(item.answers[0]) if item.answers else []
        if wanted:
            with_figures += 1
            figure_in_passages += states_any(wanted, " ".join(p.chunk.text for p in passages))
            figure_in_quotes += states_any(wanted, " ".join(q.text for q in quotes))
    return {"span_in_passages": in_passages / len(items), "span_in_quotes": in_quotes / len(items),
            "with_figures": with_figures,
            "figure_in_passages": figure_in_passages / with_figures if with_figures else None,
            "figure_in_quotes": figure_in_quotes / with_figures if with_figures else None}


def reference_figures(answer: str) -> list[float]:
    """The amounts a written reference answer states (money, percentages, "million"/"billion"), years left out:
    what a report question's quotes must hold for the answer to be read off them."""
    from rag.text import figures

    text = answer.split("SOURCE(S):")[0]
    return [value for written, value in figures(text)
            if any(mark in written for mark in ("$", "%", "million", "billion")) and not 1990 <= abs(value) <= 2035]


def states_any(wanted: list[float], text: str) -> bool:
    """Whether ``text`` states one of the ``wanted`` values (as the metric compares numbers)."""
    from rag.text import number_values, numbers_match

    have = [abs(v) for v in number_values(text)]
    return any(numbers_match(abs(w), h) for w in wanted for h in have)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.retrieval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", type=Path, required=True, help="an eval set folder (qa.jsonl, docs/)")
    parser.add_argument("--index", type=Path, required=True, help="an index holding the set's docs/")
    parser.add_argument("--variant", action="append", default=[], help="retrieval settings to switch, field=value,...")
    parser.add_argument("--limit", type=int, help="the first N answerable questions only")
    parser.add_argument("--evidence", action="store_true",
                        help="also the reference span's presence in the passages and in the quoted evidence")
    args = parser.parse_args(argv)

    from rag.answering.retrieval import HybridRetriever
    from rag.evaluation.dataset import load_set
    from rag.indexing.index import DocumentIndex
    from rag.runtime import build_embedder, quiet_libraries
    from rag.settings import Settings

    quiet_libraries()
    if not (args.set / "qa.jsonl").exists() or not args.index.is_dir():
        print(f"bench.retrieval: error: need {args.set}/qa.jsonl and an index folder at {args.index}", file=sys.stderr)
        return EXIT_USAGE
    try:
        variants = [{}] + [parse_variant(v) for v in args.variant]
        settings = Settings()
        # validated, so a typo in a field name or a bad value is a usage error, not a silent no-op
        generation_fields = {
            "evidence_sentences", "evidence_tokens", "evidence_sentences_long", "evidence_tokens_long",
            "evidence_amount_bonus",
        }
        configs = [type(settings.retrieval).model_validate(
            {**settings.retrieval.model_dump(), **{k: x for k, x in v.items() if k not in generation_fields}})
            for v in variants]
        generations = [type(settings.generation).model_validate(
            {**settings.generation.model_dump(), **{k: x for k, x in v.items() if k in generation_fields}})
            for v in variants]
        unknown = {k for v in variants for k in v} - set(type(settings.retrieval).model_fields) - generation_fields
        if unknown:
            raise ValueError(f"unknown retrieval settings: {sorted(unknown)}")
    except ValueError as exc:
        print(f"bench.retrieval: error: bad --variant: {exc}", file=sys.stderr)
        return EXIT_USAGE
    items = [i for i in load_set(args.set).items if i.answerable][: args.limit]
    embedder = build_embedder(settings).load()
    count_tokens = _token_counter(settings) if args.evidence else None
    index = DocumentIndex.open(args.index, settings.index)
    print_header("retrieval quality", machine_info())
    print(f"{args.set.name}: {len(items)} answerable questions, index {args.index}")
    try:
        for variant, config, generation in zip(variants, configs, generations, strict=True):
            started = time.perf_counter()
            retriever = HybridRetriever(index, embedder, config).load()
            figures = measure(retriever, items)
            if count_tokens is not None:
                figures.update(measure_evidence(retriever, embedder, count_tokens, items, generation))
            label = ",".join(f"{k}={v}" for k, v in variant.items()) or "defaults"
            pointed = f" pointed {figures['pointed']} (gold among them {figures['pointed_right']})" if config.focus else ""
            print(
                f"  {label:32s} r@1 {figures['recall@1']:.3f} r@5 {figures['recall@5']:.3f} "
                f"r@10 {figures['recall@10']:.3f} MRR {figures['mrr']:.3f} gold doc in top 5 "
                f"{figures['gold_doc_in_top5']:.3f} gold-doc passages of 5 {figures['gold_doc_passages_of_5']:.2f}"
                f"{pointed} ({time.perf_counter() - started:.0f} s)"
            )
            if count_tokens is not None:
                print(f"  {'':32s} reference span in the top {config.top_k} passages {figures['span_in_passages']:.3f}, "
                      f"in the quoted evidence {figures['span_in_quotes']:.3f}")
                if figures["with_figures"]:
                    print(f"  {'':32s} a reference figure ({figures['with_figures']} answers state one) in the passages "
                          f"{figures['figure_in_passages']:.3f}, in the quoted evidence {figures['figure_in_quotes']:.3f}")
    finally:
        index.close()
    return 0


def _token_counter(settings):
    """The generator's token count (its tokenizer only; no weights load)."""
    from transformers import AutoTokenizer

    from rag.models import resolve_generator

    tokenizer = AutoTokenizer.from_pretrained(resolve_generator(settings.models))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


if __name__ == "__main__":
    sys.exit(main())
