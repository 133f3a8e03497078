"""What the reader sees of a quote or a passage: whole sentences, the one that holds the answer, every cut marked.

Every front end shows evidence through ``excerpt``: the API's citation snippets, ``rag-ask``'s quotes, the
page (which shows the API's snippets and whole quotes). A cut is marked with "…" at the side it was made; a
sentence is never cut unless it alone is longer than the room, and then the words around the answer are kept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rag.answering.evidence import split_sentences
from rag.text import normalize_answer, number_values, numbers_match

ELLIPSIS = "…"


def excerpt(text: str, answer: str = "", limit: int = 300) -> str:
    """Up to ``limit`` characters of ``text`` (plus the marks): whole sentences around the first one that holds
    ``answer`` (the first sentences when none does), "…" where text was left out."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    sentences = split_sentences(text) or [text]
    at = holding_sentence(sentences, answer)
    first, last = at, at
    if len(sentences[at]) > limit:
        return _window(sentences[at], answer, limit, cut_before=at > 0, cut_after=at < len(sentences) - 1)
    size = len(sentences[at])
    # The sentences after the answer's first (they finish its thought), then the ones before, while they fit.
    while True:
        grown = False
        if last + 1 < len(sentences) and size + 1 + len(sentences[last + 1]) <= limit:
            last += 1
            size += 1 + len(sentences[last])
            grown = True
        elif first > 0 and size + 1 + len(sentences[first - 1]) <= limit:
            first -= 1
            size += 1 + len(sentences[first])
            grown = True
        if not grown:
            break
    shown = " ".join(sentences[first:last + 1])
    return f"{ELLIPSIS} " * (first > 0) + shown + f" {ELLIPSIS}" * (last < len(sentences) - 1)


def holding_sentence(sentences: Sequence[str], answer: str) -> int:
    """The index of the first sentence that ``states`` the answer; 0 when none does."""
    return next((i for i, sentence in enumerate(sentences) if states(sentence, answer)), 0)


def states(sentence: str, answer: str) -> bool:
    """Whether ``sentence`` states ``answer``: its words in order (normalised), or, for a figure, every value it
    holds as the metric compares numbers ("11.9%" is stated by "11.9 percent", "$21,213" by "21,213")."""
    needle = normalize_answer(answer)
    if needle and needle in normalize_answer(sentence):
        return True
    values, have = number_values(answer), number_values(sentence)
    return bool(values) and all(any(numbers_match(abs(v), abs(h)) for h in have) for v in values)


def _window(sentence: str, answer: str, limit: int, cut_before: bool, cut_after: bool) -> str:
    """``limit`` characters of one long sentence (a table row group), on word boundaries, around ``answer``."""
    needle = answer.strip(" .")
    at = sentence.lower().find(needle.lower()) if needle else -1
    start = 0 if at < 0 else max(0, min(at - limit // 3, len(sentence) - limit))
    if start > 0:
        space = sentence.find(" ", start)
        start = space + 1 if 0 <= space < (at if at >= 0 else len(sentence)) else start
    end = start + limit
    if end < len(sentence):
        space = sentence.rfind(" ", start, end)
        end = space if space > start else end
    shown = sentence[start:end].strip()
    before = cut_before or start > 0
    after = cut_after or end < len(sentence)
    return f"{ELLIPSIS} " * before + shown + f" {ELLIPSIS}" * after


# A press release's dateline ("SANTA CLARA, Calif., Nov. 21, 2023 (GLOBE NEWSWIRE) --") or a heading in capitals:
# no statement of a figure, whatever it contains.
_DATELINE = re.compile(r"^[A-Z][A-Z .,'-]{2,}(,\s*[A-Z][a-z]+\.?)*,?\s+\w+\.?\s+\d{1,2},\s+\d{4}|"
                       r"\((GLOBE NEWSWIRE|BUSINESS WIRE|PR NEWSWIRE)\)|^[^a-z]{12,}$")


def is_heading(sentence: str) -> bool:
    """A dateline or a heading: text a figure answer must not be followed by."""
    return _DATELINE.search(sentence) is not None
