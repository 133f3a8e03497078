"""Evidence first: the retrieved passages cut into sentences, and the few that answer the question picked out.

The generator sees a handful of quoted sentences (each with its document and page) instead of five whole
chunks: the prompt is a third as long, and a small model has less to be distracted by. Each sentence is scored
by the embedder's similarity to the question and by how much of the question's rarer words it contains;
the best ones are kept with the sentence before them (a pronoun's antecedent, a table's heading) while the
token budget lasts. Adjacent kept sentences of one chunk merge into one quote.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from rag.answering.prompting import answer_form, asks_about_report
from rag.text import content_words, numbers_in
from rag.types import Passage, Quote

if TYPE_CHECKING:
    from rag.indexing.embedding import Embedder
    from rag.settings import GenerationSettings

# A sentence ends at . ! or ? (optionally closed by a quote or bracket) before white space and a capital,
# a digit or an opening quote. Abbreviations such as "U.S. Army" are rare enough in what we index that a
# wrong cut only moves a boundary; the neighbour kept with each sentence repairs most of them.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9$])")
# A "sentence" longer than this is a table or a list without punctuation: cut it at line breaks instead.
_LONG_SENTENCE_CHARS = 360
_LINE_GROUP_CHARS = 240
# The retrieved passages' sentences (about 30 per question) are embedded in batches of 8: sentence-transformers
# sorts them by length, so small batches pad each sentence to a near neighbour's length instead of all to the
# longest. On 2 CPU cores: 0.59 s per question at the ingest's batch of 64, 0.37 s at 8, 0.43 s at 4 (30
# squad2-dev questions); that time comes before the first token.
SENTENCE_BATCH = 8


@dataclass(frozen=True)
class Sentence:
    """One sentence of a retrieved passage, with where it came from and how well it matches the question."""

    text: str  # white space collapsed
    passage: int  # 0-based rank of its passage in the retrieval
    index: int  # 0-based position within its passage
    document: str
    page_start: int
    page_end: int
    chunk_id: int
    dense: float = 0.0  # cosine similarity to the question
    lexical: float = 0.0  # idf-weighted share of the question's content words it contains
    score: float = 0.0


@dataclass(frozen=True)
class Evidence:
    """The quotes a prompt is built from, best first, and every scored sentence (for confidence features)."""

    quotes: tuple[Quote, ...]
    sentences: tuple[Sentence, ...]  # all candidates, best first

    @property
    def best(self) -> Sentence | None:
        return self.sentences[0] if self.sentences else None


def split_sentences(text: str) -> list[str]:
    """Sentences of a passage, white space collapsed; tables and lists are cut into groups of lines."""
    pieces: list[str] = []
    for part in _SENTENCE_END.split(text):
        if len(part) <= _LONG_SENTENCE_CHARS:
            pieces.append(part)
            continue
        group = ""
        for line in part.splitlines():
            if group and len(group) + len(line) > _LINE_GROUP_CHARS:
                pieces.append(group)
                group = ""
            group = f"{group}\n{line}" if group else line
        pieces.append(group)
    return [clean for piece in pieces if (clean := " ".join(piece.split()))]


def sentences_of(passages: Sequence[Passage]) -> list[Sentence]:
    """Every sentence of ``passages``, in retrieval order then reading order; duplicates (chunk overlap) dropped."""
    seen: set[str] = set()
    out: list[Sentence] = []
    for rank, passage in enumerate(passages):
        c = passage.chunk
        for i, text in enumerate(split_sentences(c.text)):
            key = text.lower()
            if key in seen or len(text) < 3:
                continue
            seen.add(key)
            out.append(Sentence(text, rank, i, c.document, c.page_start, c.page_end, int(c.id or -1)))
    return out


def lexical_overlap(question: str, sentences: Sequence[str]) -> list[float]:
    """For each sentence, the idf-weighted share of the question's content words it contains, in [0, 1].

    idf comes from the candidate sentences themselves: a word every candidate shares (the article's subject)
    says little about which sentence answers.
    """
    asked = set(content_words(question)) | set(numbers_in(question))
    if not asked:
        return [0.0] * len(sentences)
    bags = [set(content_words(s)) | set(numbers_in(s)) for s in sentences]
    df = Counter(w for bag in bags for w in bag if w in asked)
    n = len(sentences)
    idf = {w: math.log(1.0 + (n + 1) / (df[w] + 0.5)) for w in asked}
    total = sum(idf.values())
    return [sum(idf[w] for w in asked & bag) / total for bag in bags]


def states_amount(text: str) -> bool:
    """Whether ``text`` states an amount as reports do: money, a percentage, or a figure in millions or billions
    (a bare year or count is not one)."""
    return _AMOUNT.search(text) is not None


_AMOUNT = re.compile(r"\$\s?\d|\d\s?%|\d\s+(million|billion|thousand)\b|\|\s*\(?\d{1,3}(,\d{3})+", re.IGNORECASE)


def score_sentences(
    question: str, sentences: Sequence[Sentence], embed: Callable[[list[str]], np.ndarray],
    query_vector: np.ndarray, dense_weight: float = 0.5, amount_bonus: float = 0.0,
) -> list[Sentence]:
    """``sentences`` with their scores, best first. ``embed`` maps texts to unit vectors (n, dim).

    ``amount_bonus`` is added to the score of a sentence that states an amount (``states_amount``): for a question
    about a report's figures, the row or sentence holding the figure ranks above the prose around it."""
    if not sentences:
        return []
    vectors = embed([s.text for s in sentences])  # (n, dim)
    dense = vectors @ query_vector  # (n,)
    lexical = lexical_overlap(question, [s.text for s in sentences])
    scored = []
    for s, d, lex in zip(sentences, dense.tolist(), lexical, strict=True):
        # A small prior for the passage's retrieval rank breaks ties towards what both retrievers liked.
        score = dense_weight * d + (1 - dense_weight) * lex - 0.01 * s.passage
        if amount_bonus and states_amount(s.text):
            score += amount_bonus
        scored.append(Sentence(**{**s.__dict__, "dense": float(d), "lexical": float(lex), "score": float(score)}))
    return sorted(scored, key=lambda s: s.score, reverse=True)


def select_evidence(
    scored: Sequence[Sentence], count_tokens: Callable[[str], int], budget_tokens: int, max_sentences: int = 4,
) -> Evidence:
    """The best sentences, each with the one before it, within ``budget_tokens``; merged into quotes.

    ``scored`` is best first (``score_sentences``). Quotes are ordered by their best sentence.
    """
    by_place = {(s.passage, s.index): s for s in scored}
    kept: dict[tuple[int, int], Sentence] = {}
    used = 0
    for s in scored[:max_sentences]:
        # The sentence itself first, so the budget never keeps a neighbour in place of the best sentence.
        wanted = [(s.passage, s.index), (s.passage, s.index - 1)]
        for place in (p for p in wanted if p in by_place):
            if place in kept:
                continue
            cost = count_tokens(by_place[place].text) + 2
            if kept and used + cost > budget_tokens:
                continue
            kept[place] = by_place[place]
            used += cost
    quotes = _merge(kept, {(s.passage, s.index): s.score for s in scored})
    return Evidence(quotes=tuple(quotes), sentences=tuple(scored))


def _merge(kept: dict[tuple[int, int], Sentence], scores: dict[tuple[int, int], float]) -> list[Quote]:
    runs: list[list[Sentence]] = []
    for place in sorted(kept):
        s = kept[place]
        if runs and runs[-1][-1].passage == s.passage and runs[-1][-1].index == s.index - 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    quotes = [
        Quote(
            text=" ".join(s.text for s in run), document=run[0].document, page_start=run[0].page_start,
            page_end=run[0].page_end, chunk_id=run[0].chunk_id,
            score=max(scores[(s.passage, s.index)] for s in run),
        )
        for run in runs
    ]
    return sorted(quotes, key=lambda q: q.score, reverse=True)


def quote_evidence(
    question: str, passages: Sequence[Passage], embedder: "Embedder", count_tokens: Callable[[str], int],
    generation: "GenerationSettings", named: Collection[str] = (),
) -> Evidence:
    """The evidence a prompt holds for ``question``: the passages' sentences scored, the best quoted within
    ``generation.evidence_tokens`` and ``evidence_sentences``, or ``evidence_tokens_long`` and
    ``evidence_sentences_long`` for a question answered in sentences (``prompting.answer_form``: explanatory and
    report questions, whose answer often rests on several sentences or table rows).

    ``named``: the documents the question names (the service passes ``HybridRetriever.report_documents``). When
    some passages come from them, only those are quoted. "Amazon's Q2 2023 10-Q" retrieves pages of other
    companies' filings too (their wording is the same), and a sentence from one of those, quoted, was answered
    from and cited: on sec10q-dev 11 of 130 answers cited only other filings, 8 of them while the named filing's
    passages were among those retrieved. Retrieval itself still ranks every document.
    """
    from_named = [p for p in passages if p.chunk.document in named]
    bonus = generation.evidence_amount_bonus if asks_about_report(question) else 0.0
    scored = score_sentences(
        question, sentences_of(from_named or passages), partial(embedder.embed_documents, batch_size=SENTENCE_BATCH),
        embedder.embed_query(question), amount_bonus=bonus,
    )
    if answer_form(question) == "long":
        return select_evidence(scored, count_tokens, generation.evidence_tokens_long, generation.evidence_sentences_long)
    return select_evidence(scored, count_tokens, generation.evidence_tokens, generation.evidence_sentences)
