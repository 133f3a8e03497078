"""Follow-up rewriting measured on written multi-turn cases (tests/data/followup_cases.json).

For each case the question searched is, in turn: the last message as it is ("last"), the rules rewrite
("rules"), the configured rewriter with the generator ("generator", which falls back to the rules when its
rewrite fails the checks) and the hand-written standalone question ("reference", the ceiling). Each is scored
on whether a top-``k`` passage holds the gold page; with ``answers``, the full pipeline answers "last" and
"generator" and is scored on whether a gold answer is in the (non-abstained) answer.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from rag.answering.followup import FollowupRewriter, Turn, needs_context, rules_rewrite
from rag.errors import RagError
from rag.text import normalize_answer

VARIANTS = ("last", "rules", "generator", "reference")


def load_cases(path: Path) -> list[dict[str, Any]]:
    """The cases of a follow-up file (see its "description")."""
    return json.loads(path.read_text(encoding="utf-8"))["cases"]


def _hit(passages, doc: str, pages: list[int]) -> bool:
    return any(
        p.chunk.document == doc and any(p.chunk.page_start <= page <= p.chunk.page_end for page in pages)
        for p in passages
    )


def _correct(answer, golds: list[str]) -> bool:
    text = normalize_answer(answer.text)
    return not answer.abstained and any(normalize_answer(g) in text for g in golds)


def evaluate_followups(
    runtime, cases: list[dict[str, Any]], top_k: int = 3, answers: bool = False, progress=None,
) -> dict[str, Any]:
    """Per case and in total: the question each variant searched, top-``k`` gold-page hits, and answers."""
    settings = runtime.settings.followup
    rewriter = None
    if runtime.llm is not None:
        rewriter = FollowupRewriter(runtime.llm, runtime.batcher, settings.model_copy(update={"mode": "generator"}))
    rows = []
    for case in cases:
        turns = [Turn(t["role"], t["content"]) for t in case["turns"]]
        question = case["question"]
        asked = {"last": question, "reference": case["standalone"]}
        asked["rules"] = rules_rewrite(question, turns) if needs_context(question) else question
        row: dict[str, Any] = {"id": case["id"], "control": bool(case.get("control")), "asked": asked}
        if rewriter is not None:
            rewrite = asyncio.run(rewriter.rewrite(question, turns))
            asked["generator"] = rewrite.question
            row["generator_method"], row["generator_note"] = rewrite.method, rewrite.note
        retrieved = {name: runtime.retriever.retrieve(q, top_k) for name, q in asked.items()}
        row["hit"] = {name: _hit(p, case["doc"], case["pages"]) for name, p in retrieved.items()}
        row["hit1"] = {name: _hit(p[:1], case["doc"], case["pages"]) for name, p in retrieved.items()}
        if answers and runtime.answers is not None and not row["control"]:
            row["correct"], row["answers"] = {}, {}
            for name in ("last", "generator"):
                try:
                    answer = asyncio.run(runtime.answers.answer(asked[name]))
                except RagError as exc:  # a timeout on a busy CPU: scored as not answered, and said so
                    row["correct"][name], row["answers"][name] = False, f"error: {exc}"
                    continue
                row["correct"][name] = _correct(answer, case["answers"])
                row["answers"][name] = answer.text
        rows.append(row)
        if progress is not None:
            progress(row)
    names = [v for v in VARIANTS if all(v in r["hit"] for r in rows)]
    follow = [r for r in rows if not r["control"]]
    total = {
        f"top{top_k}_{name}": f"{sum(r['hit'][name] for r in follow)}/{len(follow)}" for name in names
    }
    total.update({f"top1_{name}": f"{sum(r['hit1'][name] for r in follow)}/{len(follow)}" for name in names})
    total["controls_unchanged_by_rules"] = f"{sum(r['asked']['rules'] == r['asked']['last'] for r in rows if r['control'])}/{len(rows) - len(follow)}"
    if "generator" in names:
        methods = [r["generator_method"] for r in follow]
        total["generator_rewrites_kept"] = f"{methods.count('generator')}/{len(follow)}"
    if answers and follow and "correct" in follow[0]:
        for name in ("last", "generator"):
            total[f"answered_right_{name}"] = f"{sum(r['correct'][name] for r in follow)}/{len(follow)}"
        total["answer_errors"] = sum(str(a).startswith("error:") for r in follow for a in r["answers"].values())
    return {"total": total, "cases": rows}
