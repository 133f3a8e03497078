"""Document names as evidence: a question that names what a file's name says ("Amazon's Q2 2023 10-Q" and
"2023 Q2 AMZN.pdf", "the Normans" and "Normans.pdf") points at that document.

Each document's name is cut into tokens; a token's weight is its idf over all the names in the index, so a
token every name shares ("2023" in a folder of 2023 filings, "pdf") says little and a rare one ("q2", "amzn")
much. A candidate passage scores the summed weight of its document's name tokens that the question contains,
when they are at least half the weight of the whole name: a question that shares one common word with an
article's title ("who") does not point at it. ``rank`` orders the candidates by that score, as a third ranking
for reciprocal rank fusion.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import PurePosixPath

_TOKEN = re.compile(r"[a-z0-9]+")
MIN_NAME_SHARE = 0.5  # of a name's token weight the question must hold to point at that document


# "the second quarter of 2023" is how a question says what a filing's name says as "2023 Q2"
_QUARTER = re.compile(r"\b(first|second|third|fourth|1st|2nd|3rd|4th)\s+(?:fiscal\s+)?quarter\b")
_ORDINAL = {"first": 1, "second": 2, "third": 3, "fourth": 4, "1st": 1, "2nd": 2, "3rd": 3, "4th": 4}


def _tokens(text: str) -> set[str]:
    lowered = text.lower()
    tokens = set(_TOKEN.findall(lowered))
    tokens.update(f"q{_ORDINAL[m.group(1)]}" for m in _QUARTER.finditer(lowered))
    for token in list(tokens):  # "fy2018" also as "fy" and "2018", "q2" as "q" and "2"
        tokens.update(re.findall(r"[a-z]+|[0-9]+", token))
    return tokens


def name_tokens(document: str) -> set[str]:
    """Lower-case letter/digit runs of a document's file name without its extension ("2023 Q2 AMZN.pdf" ->
    {"2023", "q2", "amzn", "q", "2"}): a glued run is also split ("FY2018" -> "fy2018", "fy", "2018")."""
    return _tokens(PurePosixPath(document.replace("\\", "/")).stem)


def question_tokens(question: str) -> set[str]:
    """The question's tokens, cut the same way as names ("the first quarter" also as "q1")."""
    return _tokens(question)


class TitleIndex:
    """Name-token weights of every document in an index."""

    def __init__(self, documents: Iterable[str]):
        self._tokens = {doc: name_tokens(doc) for doc in documents}
        df = Counter(t for tokens in self._tokens.values() for t in tokens)
        n = max(len(self._tokens), 1)
        # idf with the +1 smoothing of BM25: a token in every name weighs close to 0, never below it
        self._idf = {t: math.log(1.0 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def score(self, question: str, document: str) -> float:
        """Summed weight of the document's name tokens that the question contains; 0 below half the name's."""
        return self._score(question_tokens(question), document)

    def _score(self, asked: set[str], document: str) -> float:
        weights = {t: self._idf.get(t, 0.0) for t in self._tokens.get(document, name_tokens(document))}
        matched = sum(w for t, w in weights.items() if t in asked)
        total = sum(weights.values())
        return matched if total > 0 and matched >= MIN_NAME_SHARE * total else 0.0

    def rank(self, question: str, candidates: dict[int, str]) -> list[int]:
        """Candidate chunk ids (id -> document) whose document's name the question matches, best first."""
        asked = question_tokens(question)
        scores = {cid: self._score(asked, document) for cid, document in candidates.items()}
        return sorted((cid for cid, s in scores.items() if s > 0), key=lambda cid: scores[cid], reverse=True)
