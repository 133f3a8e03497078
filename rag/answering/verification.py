"""Checking an answer against the passages it cites, after generation.

The support score in [0, 1]:
- lexical: the share of the content words the answer adds to the question that occur in the cited passages
  (a small model answering from memory uses words the passages lack; an answer that only restates the
  question adds none and scores 0);
- judge (optional, ``generation.judge``): the generator itself asked "is this answer stated in this passage?",
  read as P(Yes) from its next-token probabilities, averaged with the lexical score.
An answer whose support is below ``generation.min_support`` becomes an abstention.
"""

from __future__ import annotations

from collections.abc import Callable

from rag.text import normalize_answer
from rag.types import Passage

# Words that carry no claim: their presence in a passage proves nothing.
_STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or is are was were be been it its this that these those as "
    "which who whom what when where why how there their they he she his her them we our you your i not no "
    "yes do does did has have had into than then so such also about over after before between during".split()
)

JUDGE_SYSTEM = "You check whether an answer is stated in a passage. Reply with Yes or No only."


def content_words(text: str) -> list[str]:
    """SQuAD-normalised tokens minus stopwords."""
    return [w for w in normalize_answer(text).split() if w not in _STOPWORDS]


def lexical_support(answer: str, passages: list[Passage], question: str = "") -> float:
    """Share of the content words the answer adds to ``question`` that the passages contain; 0 when it adds none."""
    asked = set(content_words(question))
    words = [w for w in content_words(answer) if w not in asked]
    if not words:
        return 0.0
    vocabulary = set(normalize_answer(" ".join(p.chunk.text for p in passages)).split())
    return sum(w in vocabulary for w in words) / len(words)


def attribute(answer: str, passages: list[Passage], cited: list[int]) -> list[int]:
    """1-based numbers of the passages the answer used.

    The model's own [n] markers when it gave valid ones; otherwise the passages that contain the most of the
    answer's content words (ties keep retrieval order), so a citation is never a guess from rank alone.
    """
    if cited:
        return cited
    words = set(content_words(answer))
    if not words:
        return []
    overlaps = [len(words & set(normalize_answer(p.chunk.text).split())) for p in passages]
    best = max(overlaps, default=0)
    return [i + 1 for i, o in enumerate(overlaps) if o == best and best > 0][:2]


def judge_messages(question: str, answer: str, passages: list[Passage]) -> list[dict[str, str]]:
    """The yes/no support question put to the generator."""
    evidence = "\n\n".join(p.chunk.text for p in passages)
    user = (
        f"Passage:\n{evidence}\n\nQuestion: {question}\nAnswer: {answer}\n\n"
        "Is this answer to the question stated in the passage? Reply Yes or No."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


class Verifier:
    """Scores support; ``judge`` maps rendered prompts to P(Yes) (None disables the judge)."""

    def __init__(
        self,
        judge: Callable[[list[str]], list[float]] | None,
        render: Callable[[list[dict[str, str]]], str] | None,
    ):
        if (judge is None) != (render is None):
            raise ValueError("judge and render must be given together")
        self.judge = judge
        self.render = render

    def support(self, question: str, answer: str, cited: list[Passage]) -> float:
        """Support of ``answer`` by the ``cited`` passages, in [0, 1]."""
        if not cited:
            return 0.0
        lexical = lexical_support(answer, cited, question)
        if self.judge is None or self.render is None:
            return lexical
        judged = self.judge([self.render(judge_messages(question, answer, cited))])[0]
        return 0.5 * lexical + 0.5 * judged
