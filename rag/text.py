"""Text normalisation shared by answering and evaluation: SQuAD normalisation, content words, numbers.

Answering checks answers against evidence with the same normalisation the metrics score them with, so a
span the service calls "in the evidence" is one the scorer would find there too.
"""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)

# Words that carry no claim: their presence in a passage proves nothing.
STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or is are was were be been it its this that these those as "
    "which who whom what when where why how there their they he she his her them we our you your i not no "
    "yes do does did has have had into than then so such also about over after before between during "
    "can could would should will may might must shall being am if any all some most more many much "
    "other another each one ones us me my mine whose own same very just only".split()
)

# A number as written in prose or a filing: optional sign or parenthesis, currency, thousands separators,
# decimals, an optional percent sign. "(1,234)" is accounting notation for -1234.
_NUMBER = re.compile(r"(?<![\w.])(\()?-?\$?\s?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?\)?(\s?%)?")


_ENDS_IN_FIGURE = re.compile(r"\d\)?%?\s*$")


def ends_in_figure(line: str) -> bool:
    """Whether a line ends in a figure ("Net sales $ 134,383", "(627)", "12.5%"): how a table's row reads as text."""
    return _ENDS_IN_FIGURE.search(line) is not None


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, the articles a/an/the (whole words) and extra white space (SQuAD v2)."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _stem(word: str) -> str:
    """A light plural strip so that "engines" meets "engine"; enough for overlap features, not linguistics."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def content_words(text: str) -> list[str]:
    """SQuAD-normalised tokens minus stopwords, lightly stemmed."""
    return [_stem(w) for w in normalize_answer(text).split() if w not in STOPWORDS]


def number_values(text: str) -> list[float]:
    """The numbers ``text`` states, as values: separators, currency signs, "%" and trailing zeros ignored.

    Years and other bare integers count too; a scale word ("billion") is not applied.
    """
    return [value for _, value in figures(text)]


_SCALE = re.compile(r"\s?(thousand|million|billion|trillion)\b", re.IGNORECASE)


def figures(text: str) -> list[tuple[str, float]]:
    """The numbers ``text`` states, each as written ("$6,306", "14.5%", "$1.1 billion": a scale word is kept in
    the written form but not applied to the value) and as its value (``number_values``)."""
    found = []
    for match in _NUMBER.finditer(text):
        paren, whole, decimals = match.group(1), match.group(2), match.group(3) or ""
        try:
            value = float(whole.replace(",", "") + decimals)
        except ValueError:
            continue
        negative = match.group(0).lstrip("($ ").startswith("-") or (paren and match.group(0).endswith(")"))
        scale = _SCALE.match(text, match.end())
        written = match.group(0).strip() + (f" {scale.group(1)}" if scale else "")
        found.append((written, -value if negative else value))
    return found


def numbers_in(text: str) -> list[str]:
    """The numbers of ``text`` as canonical strings ("1375500", "30.8"): tokens for overlap features."""
    return [_canonical(v) for v in number_values(text)]


def _canonical(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


def single_number(text: str) -> float | None:
    """The value when ``text`` is one number and nothing else (a reference such as "$5,466" or "30.8%")."""
    stripped = text.strip()
    match = _NUMBER.fullmatch(stripped)
    if match is None:
        return None
    values = number_values(stripped)
    return values[0] if len(values) == 1 else None


def numbers_match(a: float, b: float, relative: float = 0.005) -> bool:
    """Equal within ``relative`` difference (0.5% by default), as the metric definitions say."""
    if a == b:
        return True
    return abs(a - b) <= relative * max(abs(a), abs(b))
