"""The grounded prompt: numbered quotes, [n] citations, an answer form that follows the question, and an
explicit way to say the documents don't answer."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from rag.answering.calculation import SYSTEM as CALCULATION_SYSTEM
from rag.answering.calculation import asks_for_calculation

if TYPE_CHECKING:
    from rag.answering.evidence import Quote

ABSTAIN_TEXT = "The documents do not contain the answer."

# Evidence-first prompts: a few numbered quotes instead of whole passages. The reply is prefilled with
# "Answer:", so the first generated token is the answer's or the marker's: its probability of being the
# marker's first word is a confidence feature read from the same generate call.
ABSTAIN_MARKER = "NOT IN DOCUMENTS"
MARKER_WORDS = ("NOT",)
REPLY_PREFIX = "Answer:"
QUOTES_SYSTEM = {
    "short": (
        "Answer the question using only the numbered quotes, never your own knowledge. Reply in this format:\n"
        "Answer: <the shortest phrase copied from the quotes that answers it: a name, number, date or a few "
        "words>\nSource: [<quote number>]\n"
        f"If the quotes do not answer the question, reply: Answer: {ABSTAIN_MARKER}"
    ),
    "long": (
        "Answer the question using only the numbered quotes, never your own knowledge. Reply in this format:\n"
        "Answer: <one to three sentences using the words of the quotes>\nSource: [<quote numbers>]\n"
        f"If the quotes do not answer the question, reply: Answer: {ABSTAIN_MARKER}"
    ),
}
AnswerForm = Literal["short", "long"]

# Questions that ask for an explanation, a description or a comparison get sentences; the rest a short span.
_EXPLANATORY = re.compile(
    r"^\s*(why|how(?!\s+(many|much|long|old|far|big|tall|large|often|high|deep|wide|fast|old))|describe|explain|"
    r"discuss|compare|analy[sz]e|examine|summari[sz]e|assess|evaluate|what\s+(\w+\s+)?(changes?|impacts?|"
    r"effects?|factors|risks?|role|trends?|is\s+the\s+(relationship|difference|significance|purpose)|are\s+the\s+(main|key|differences))|"
    r"in\s+what\s+ways?)\b",
    re.IGNORECASE,
)
_LONG_QUESTION_WORDS = 18
# "How many / how much / how far ..." asks for a quantity, however long the question ("Between 1978 and 2008,
# students were required to complete how many classes outside their concentration?"): a span, not sentences.
_QUANTITY = re.compile(r"\bhow\s+(many|much|long|old|far|big|tall|large|often|high|deep|wide|fast)\b", re.IGNORECASE)
# A question about a report or a reporting period ("in the latest 10-Q", "for Q2 2023", "fiscal 2022"): its figure
# means little without the sentence that says what it measures and for which period.
_REPORT_QUESTION = re.compile(
    r"\b(10-?[KQ]s?|8-?K|annual report|quarterly report|filings?|fiscal|FY\s?'?\d{2,4}|Q[1-4]\s?'?\d{2,4}|"
    r"\d{4}\s?Q[1-4]|(first|second|third|fourth|latest|most recent|last) (fiscal )?(quarter|report))\b",
    re.IGNORECASE,
)


def asks_about_report(question: str) -> bool:
    """Whether the question names a report or a reporting period ("in Amazon's Q2 2023 10-Q", "fiscal 2022",
    "the latest quarterly report"): one whose answer must come from the report it names."""
    return _REPORT_QUESTION.search(question) is not None


def answer_form(question: str) -> AnswerForm:
    """"long" for explanatory questions (why, how, describe, compare, what changed), long multi-part ones and
    questions about a report's figures; "short" for factoid ones (who, when, where, which, how many, what is X)."""
    if _EXPLANATORY.search(question) or asks_about_report(question):
        return "long"
    if _QUANTITY.search(question):
        return "short"
    if re.search(r"\b(how|why)\b", question, re.IGNORECASE) and len(question.split()) >= 10:
        return "long"
    return "long" if len(question.split()) >= _LONG_QUESTION_WORDS else "short"


_SHORT_MAX_WORDS = 5
_BARE_ANSWER_WORDS = 8  # a sentence answer this short is a bare figure or name: the quote that holds it follows


def short_span(answer: str, question: str) -> str:
    """A short answer cut down to what it adds to the question.

    A small model often answers "Where was Dyrrachium located?" with "Dyrrachium was located in the Adriatic."
    Past ``_SHORT_MAX_WORDS`` words, the longest run of words the question does not already hold is kept (edge
    stopwords dropped): the span a reader wants first, and what a span metric compares.
    """
    from rag.text import STOPWORDS, content_words, normalize_answer

    words = answer.strip().rstrip(".").split()
    if len(words) <= _SHORT_MAX_WORDS:
        return " ".join(words)
    asked = set(normalize_answer(question).split()) | set(content_words(question))
    runs: list[list[str]] = [[]]
    for word in words:
        if normalize_answer(word) in asked:
            runs.append([])
        else:
            runs[-1].append(word)

    def trimmed(run: list[str]) -> list[str]:
        while run and normalize_answer(run[0]) in STOPWORDS | {""}:
            run = run[1:]
        while run and normalize_answer(run[-1]) in STOPWORDS | {""}:
            run = run[:-1]
        return run

    best = max((trimmed(run) for run in runs), key=len)
    return " ".join(best).strip(",;:") if best else " ".join(words)


def search_style(question: str) -> bool:
    """A keyword-style query ("penobscot river start and end") rather than a written question: no question
    mark and no capital at the start. Such a query is answered like a search engine would, with the sentence
    that answers it, not a bare span."""
    stripped = question.strip()
    return not stripped.endswith("?") and not stripped[:1].isupper()


def present(question: str, form: AnswerForm, answer: str, quotes: Sequence["Quote"]) -> str:
    """The answer text as the service gives it.

    - a written factoid question: the short span (``short_span``);
    - a keyword-style query with a factoid answer: the quoted sentence(s) holding the span, so the reader
      sees the answer in its words (the first quote that contains it, else the first quote);
    - an explanatory question: the generated sentences as they are; a bare answer of a few words ("11.9%")
      followed by the quoted sentence that holds it.
    Applying it to its own output gives the same text, so re-scoring a recorded answer is safe.
    """
    if form == "long":
        text = answer.strip()
        if len(text.split()) > _BARE_ANSWER_WORDS or not quotes:
            return text
        # "11.9%" to "what share of revenue did Services contribute in Q3 2023?": the figure alone does not say
        # what it measures or for which period; the quoted sentence holding it does.
        from rag.text import normalize_answer

        statement = stating_sentence(text, quotes)
        if not statement or normalize_answer(statement) in normalize_answer(text):
            return text
        return f"{text.rstrip('.')}. {statement}"
    if search_style(question) and quotes:
        return _holding(answer, quotes).text
    return short_span(answer, question)


def stating_sentence(answer: str, quotes: Sequence["Quote"]) -> str:
    """The sentence (or table row) of the quotes that states ``answer``; where none does, the first sentence of the
    quote holding it that is not a dateline or a heading ("" when there is none): what a bare figure is followed by."""
    from rag.answering.display import is_heading, states
    from rag.answering.evidence import split_sentences

    sentences = [s for q in quotes for s in split_sentences(q.text)]
    stating = next((s for s in sentences if states(s, answer) and not is_heading(s)), None)
    if stating is not None:
        return stating
    return next((s for s in split_sentences(_holding(answer, quotes).text) if not is_heading(s)), "")


def _holding(answer: str, quotes: Sequence["Quote"]) -> "Quote":
    """The first quote that contains the answer (normalised), else the first quote; ``quotes`` is not empty."""
    from rag.text import normalize_answer

    needle = normalize_answer(answer)
    holding = [q for q in quotes if needle and needle in normalize_answer(q.text)]
    return (holding or list(quotes))[0]


def build_quote_messages(
    question: str, quotes: Sequence["Quote"], form: AnswerForm, calculate: bool = False,
) -> list[dict[str, str]]:
    """Chat messages: the rules for the answer form, then the numbered quotes (with their source) and the question.

    ``calculate``: a sentence answer to a question asking for a ratio, change or sum is also asked for a
    ``Calculation:`` line (``rag.answering.calculation``); other prompts are unchanged, so their shared prefix and
    recorded answers stay valid."""
    blocks = [f"[{i}] ({q.document}, p. {q.page_start}) {q.text}" for i, q in enumerate(quotes, start=1)]
    user = "Quotes:\n" + "\n".join(blocks) + f"\n\nQuestion: {question}"
    system = QUOTES_SYSTEM[form]
    if calculate and form == "long" and asks_for_calculation(question):
        system = f"{CALCULATION_SYSTEM}\nIf the quotes do not state the figures, reply: Answer: {ABSTAIN_MARKER}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# What counts as the model declining: our marker and the ways small models paraphrase it.
_ABSTAIN = re.compile(
    r"not\s+in\s+(the\s+)?documents|not\s+(found|mentioned|stated|given|provided|contained|present)\s+in\s+the\s+"
    r"(passages?|documents?|context|text)|(passages?|documents?|context)\s+do(es)?\s+not\s+(contain|mention|say|"
    r"provide|specify|include)|cannot\s+be\s+(answered|determined)|no\s+(information|mention)\s+(about|of|on)",
    re.IGNORECASE,
)
_CITATION = re.compile(r"\[(\d{1,2})\]")


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
    """The answer alone: without the "Answer:" label, the "Source:" and "Calculation:" lines and [n] markers."""
    text = re.split(r"\n\s*(sources?|calculation)\s*:", text, maxsplit=1, flags=re.IGNORECASE)[0]
    text = re.sub(r"^\s*answer\s*:\s*", "", text, flags=re.IGNORECASE)
    return re.sub(r"\s*\[\d{1,2}\]", "", text).strip()


class AnswerStream:
    """Turns raw generated deltas into deltas of the clean answer (what ``answer_text`` gives at the end).

    Holds back a tail that may still become a label or a marker ("Ans", "[1", a "Source" line), so the
    concatenated output equals the final answer text whenever the model keeps to the format.
    """

    # "Calculation" is the longest line label a reply has (11 letters)
    _PARTIAL_TAIL = re.compile(r"(\[\d{0,2}|\n\s*[A-Za-z]{0,11}:?\s*\[?\d{0,2})$")

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
