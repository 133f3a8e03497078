"""Which documents a question is about, from what it names: "Amazon's Q2 2023 10-Q" is about the filing whose
cover page says "AMAZON.COM, INC." and whose file is "2023 Q2 AMZN.pdf"; "Intel's latest 10-Q" is about the
most recent of Intel's filings.

A question over a folder of filings names its company and period, and every filing shares most of its words
with every other ("revenue", "quarter", "10-Q"), so passage similarity alone often picks another company's
page. Each document gets a profile: the tokens of its file name and of the head of its first page (the cover
of a filing, the title and lead of an article), each weighted by an idf over the profiles. Only distinctive
tokens count, those in at most half the profiles: the company, its ticker, the quarter, the year. The question
points at the documents with the best summed weight of the distinctive tokens it shares with them; when it asks
for the latest or most recent one, at the newest of those (by the latest full date on the first page: a
filing's shares "outstanding as of July 21, 2023", after its "period ended June 30, 2023"). A question that shares nothing distinctive with any profile,
or matches too many documents equally, points at none. Tokens of the first page count when capitalised there
(names, not incidental words); tokens of the file name when the question holds half of the name's weight.

The retriever adds rankings within the documents pointed at (rag.answering.retrieval); it never filters out the
rest, so a question that names one thing and asks about another still finds it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from datetime import date

from rag.answering.titles import MIN_NAME_SHARE, name_tokens, question_tokens
from rag.text import STOPWORDS

HEAD_CHARS = 2000  # of the first page: a filing's cover names the company and period within it
MAX_DOCUMENT_SHARE = 0.5  # a token in more of the profiles than this says nothing about which one is meant
MAX_FOCUS_SHARE = 0.25  # a question matching more of the documents than this (and at least 4) points at none
# A question points at nothing when its summed weight is below this share of the weight of a token only one
# document has (the idf's ceiling grows with the number of documents, so a fixed floor would not do).
MIN_SCORE_SHARE = 0.5
NAME_WEIGHT = 2.0  # a file-name token the question holds counts this many times one of the first page

_LATEST = re.compile(r"\b(latest|most recent|most recently|newest|current|last)\b", re.IGNORECASE)
_MONTHS = {m: i for i, m in enumerate(
    ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
     "november", "december"), start=1)}
_DATE = re.compile(r"\b(" + "|".join(_MONTHS) + r")\s+(\d{1,2}),\s*(\d{4})\b", re.IGNORECASE)


_NAME = re.compile(r"\b[A-Z][A-Za-z0-9&.\-]*")


def names_in(text: str) -> set[str]:
    """Tokens of the capitalised words of ``text`` ("AMAZON.COM, INC." -> amazon, com, inc): the names a
    question uses for a document; lower-case words on a first page are too often incidental."""
    return question_tokens(" ".join(_NAME.findall(text)))


def asks_latest(question: str) -> bool:
    """True when the question asks for the newest document ("the latest 10-Q", "most recent quarter")."""
    return _LATEST.search(question) is not None


def latest_date(text: str) -> date | None:
    """The latest full date written in ``text`` ("June 30, 2023"), or None."""
    found = []
    for month, day, year in _DATE.findall(text):
        try:
            found.append(date(int(year), _MONTHS[month.lower()], int(day)))
        except ValueError:  # "February 30, 2023" in extracted text
            continue
    return max(found, default=None)


class DocumentFocus:
    """Document profiles for one index; ``resolve`` maps a question to the documents it names."""

    def __init__(self, first_pages: Mapping[str, str]):
        """``first_pages``: document name -> text of its first page (the head is used)."""
        self._names = {doc: name_tokens(doc) for doc in first_pages}
        self._profiles = {doc: self._names[doc] | names_in(text[:HEAD_CHARS]) for doc, text in first_pages.items()}
        self._dates = {doc: latest_date(text[:HEAD_CHARS]) for doc, text in first_pages.items()}
        n = len(self._profiles)
        df = Counter(t for tokens in self._profiles.values() for t in tokens)
        self._idf_ceiling = math.log(1.0 + (n - 0.5) / 1.5)  # the idf of a token in one profile
        self._idf = {
            t: math.log(1.0 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items() if f <= MAX_DOCUMENT_SHARE * n
        }
        # Each file name's token weights and their total, fixed for the index: not rebuilt per question.
        self._name_weights = {
            doc: {t: self._idf.get(t, 0.0) for t in names if t not in STOPWORDS} for doc, names in self._names.items()
        }
        self._name_totals = {doc: sum(weights.values()) for doc, weights in self._name_weights.items()}

    def scores(self, question: str) -> dict[str, float]:
        """Summed idf of the distinctive profile tokens each document shares with the question (0 omitted)."""
        asked = {t for t in question_tokens(question) if t in self._idf and t not in STOPWORDS}
        out = {}
        for doc, tokens in self._profiles.items():
            score = sum(self._idf[t] for t in asked & tokens - self._names[doc])
            # The file name is how people name a document, but only as a whole: "get out" does not name
            # "Can't Get You Out of My Head". Its tokens count when the question holds half of its weight.
            held = sum(w for t, w in self._name_weights[doc].items() if t in asked)
            if held and held >= MIN_NAME_SHARE * self._name_totals[doc]:
                score += NAME_WEIGHT * held
            if score > 0:
                out[doc] = score
        return out

    def resolve(self, question: str) -> tuple[str, ...]:
        """The documents the question points at (the tied best, by name; empty when it points at none)."""
        scores = self.scores(question)
        best = max(scores.values(), default=0.0)
        if best <= 0 or best < MIN_SCORE_SHARE * self._idf_ceiling:
            return ()
        top = sorted((d for d, s in scores.items() if s >= best - 1e-9), key=lambda d: d)
        if asks_latest(question) and len(top) > 1:
            dated = [d for d in top if self._dates.get(d) is not None]
            if dated:
                newest = max(self._dates[d] for d in dated)
                top = [d for d in dated if self._dates[d] == newest]
        if len(top) > max(3, MAX_FOCUS_SHARE * len(self._profiles)):
            return ()
        return tuple(top)
