"""The grounded prompt: numbered passages, [n] citations, an explicit way to say the documents don't answer."""

from __future__ import annotations

import re
from collections.abc import Callable

from rag.types import Passage

ABSTAIN_TEXT = "The documents do not contain the answer."

# Measured on Qwen2.5-Coder-0.5B: asking for "answer, then [n]" at the end of the system prompt made it
# reply with a bare "[1]"; this answer/source format gives real answers. Citations it omits are attributed
# from the passages afterwards (rag.answering.verification.attribute).
SYSTEM = (
    "Answer the question using only the numbered passages, never your own knowledge. Reply in this format:\n"
    "Answer: <a few words or one sentence, copied from the passages where possible>\n"
    "Source: [<passage number>]\n"
    "If the passages do not contain the answer, reply: Answer: NOT IN DOCUMENTS"
)

# What counts as the model declining: our marker and the ways small models paraphrase it.
_ABSTAIN = re.compile(
    r"not\s+in\s+(the\s+)?documents|not\s+(found|mentioned|stated|given|provided|contained|present)\s+in\s+the\s+"
    r"(passages?|documents?|context|text)|(passages?|documents?|context)\s+do(es)?\s+not\s+(contain|mention|say|"
    r"provide|specify|include)|cannot\s+be\s+(answered|determined)|no\s+(information|mention)\s+(about|of|on)",
    re.IGNORECASE,
)
_CITATION = re.compile(r"\[(\d{1,2})\]")


def build_messages(question: str, passages: list[Passage]) -> list[dict[str, str]]:
    """Chat messages for the generator: system rules, then the numbered passages and the question."""
    blocks = [f"[{i}] {p.chunk.text}" for i, p in enumerate(passages, start=1)]
    user = "\n\n".join(blocks) + f"\n\nQuestion: {question}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def fit_passages(
    question: str, passages: list[Passage], count_tokens: Callable[[str], int], budget: int
) -> list[Passage]:
    """The longest prefix of ``passages`` (best first) whose prompt stays within ``budget`` tokens."""
    kept: list[Passage] = []
    used = count_tokens(SYSTEM) + count_tokens(question) + 32  # 32: chat template and labels
    for passage in passages:
        cost = count_tokens(passage.chunk.text) + 12
        if kept and used + cost > budget:
            break
        kept.append(passage)
        used += cost
    return kept


def is_abstention(text: str) -> bool:
    """True when the generated text declines to answer."""
    return not text.strip() or bool(_ABSTAIN.search(text))


def cited_numbers(text: str, n_passages: int) -> list[int]:
    """1-based passage numbers cited as [n] in ``text``, in order of first mention, valid ones only."""
    seen: list[int] = []
    for match in _CITATION.finditer(text):
        number = int(match.group(1))
        if 1 <= number <= n_passages and number not in seen:
            seen.append(number)
    return seen


def answer_text(text: str) -> str:
    """The answer alone: without the "Answer:" label, the "Source:" line and [n] markers."""
    text = re.split(r"\n\s*sources?\s*:", text, maxsplit=1, flags=re.IGNORECASE)[0]
    text = re.sub(r"^\s*answer\s*:\s*", "", text, flags=re.IGNORECASE)
    return re.sub(r"\s*\[\d{1,2}\]", "", text).strip()


class AnswerStream:
    """Turns raw generated deltas into deltas of the clean answer (what ``answer_text`` gives at the end).

    Holds back a tail that may still become a label or a marker ("Ans", "[1", a "Source" line), so the
    concatenated output equals the final answer text whenever the model keeps to the format.
    """

    _PARTIAL_TAIL = re.compile(r"(\[\d{0,2}|\n\s*[A-Za-z]{0,7}:?\s*\[?\d{0,2})$")

    def __init__(self) -> None:
        self.raw = ""
        self.sent = ""

    def feed(self, delta: str) -> str:
        """The new text safe to show after ``delta``."""
        self.raw += delta
        head = self.raw.lstrip()
        if "answer:".startswith(head.lower()[:7]) and len(head) < 7:
            return ""  # still possibly the "Answer:" label
        safe = answer_text(self._PARTIAL_TAIL.sub("", self.raw))
        if "not in documents".startswith(safe.lower()):
            return ""  # may still become the abstention marker, which is never streamed as an answer
        if not safe.startswith(self.sent) or is_abstention(safe):
            return ""
        new, self.sent = safe[len(self.sent):], safe
        return new
