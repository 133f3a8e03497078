"""The rules a reply passes before it is given (rag.answering.finishing), as a table of cases, and what the reader
sees of the evidence (rag.answering.display)."""

from __future__ import annotations

import pytest

from rag.answering.display import ELLIPSIS, excerpt, is_heading
from rag.answering.finishing import CHECKS, finish, read_reply
from rag.answering.prompting import AnswerStream, answer_text, build_quote_messages, present
from rag.types import Quote

NORMANS = Quote(
    text="The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
    "France. They were descended from Norse raiders.",
    document="Normans.pdf", page_start=1, page_end=1, chunk_id=1, score=0.9,
)
STORIES = Quote(
    text="The Lavietes Pavilion is an indoor arena. It seats 2,195 people.", document="Harvard.pdf",
    page_start=4, page_end=4, chunk_id=2, score=0.7,
)
# Real sentences of a sec10q-dev filing (Apple's Q3 2023 10-Q), in millions.
SALES = Quote(
    text="Services net sales were $21,213 million for the three months ended July 1, 2023. Total net sales were "
    "$81,797 million, compared to $82,959 million in the same quarter of 2022.",
    document="2023 Q3 AAPL.pdf", page_start=3, page_end=3, chunk_id=3, score=0.9,
)
SHARE = "What percentage of Apple's total net sales did the Services segment contribute in Q3 2023?"


def verdict(question, form, raw, quotes, confidence=0.9, threshold=0.5, calculate=False):
    return finish(read_reply(question, form, raw, quotes), confidence, threshold, calculate=calculate)


@pytest.mark.parametrize("question, form, raw, quotes, confidence, check, reason", [
    # given
    ("In what country is Normandy located?", "short", " France\nSource: [1]", [NORMANS], 0.9, None, None),
    # the generator declines, in our marker or in its own words
    ("Who ruled Normandy in 1200?", "short", " NOT IN DOCUMENTS", [NORMANS], 0.9, "generator declined",
     "no answer in the quotes"),
    ("Who ruled Normandy in 1200?", "short", " The passages do not mention it.", [NORMANS], 0.9,
     "generator declined", "no answer in the quotes"),
    # a span made only of the question's words
    ("Who were the Normans descended from?", "short", " the Normans", [NORMANS], 0.9, "restates the question",
     "repeats the question"),
    # a span whose figure no quote states
    ("How many stories does the Lavietes Pavilion have?", "short", " 2\nSource: [1]", [STORIES], 0.9,
     "span figure not quoted", "figure is not in the quotes"),
    # an answer no quote holds, none cited, no word shared
    ("Who founded Normandy?", "short", " Charlemagne", [NORMANS], 0.9, "not in the quotes",
     "not in the quoted evidence"),
    # unsure
    ("In what country is Normandy located?", "short", " France\nSource: [1]", [NORMANS], 0.2, "below confidence",
     "confidence 0.20 is below 0.50"),
    # a sentence answer with a figure no quote states is given (the figure is listed, not refused)
    ("Describe Apple's Services sales in Q3 2023.", "long", " Services net sales were $21.5 billion. [1]", [SALES],
     0.9, None, None),
])
def test_checks_decide_in_order(question, form, raw, quotes, confidence, check, reason) -> None:
    result = verdict(question, form, raw, quotes, confidence)
    assert result.check == check
    assert (result.reason is None) if reason is None else (reason in result.reason)


def test_the_checks_are_one_ordered_list_of_named_rules() -> None:
    assert [name for name, _ in CHECKS] == [
        "restates the question", "span figure not quoted", "generator declined", "not in the quotes",
        "below confidence",
    ]


def test_a_declined_reply_keeps_no_draft_and_others_do() -> None:
    assert not verdict("Who ruled Normandy in 1200?", "short", " NOT IN DOCUMENTS", [NORMANS]).keeps_draft
    assert verdict("Who were the Normans descended from?", "short", " the Normans", [NORMANS]).keeps_draft


def test_a_sentence_answer_lists_its_unquoted_figures_and_cites_every_quote() -> None:
    result = verdict("Describe Apple's Services sales in Q3 2023.", "long",
                     " Services net sales were $21.5 billion. [2]", [NORMANS, SALES])
    assert result.draft.unquoted == ("$21.5 billion",)
    assert result.cited == (SALES, NORMANS)  # the one it rests on first, then the rest it was written from


def test_a_calculation_is_computed_from_quoted_figures_with_their_pages() -> None:
    raw = (" Services net sales were $21,213 million of total net sales of $81,797 million.\n"
           "Calculation: 21,213 / 81,797 * 100\nSource: [1]")
    result = verdict(SHARE, "long", raw, [SALES], calculate=True)
    assert result.reason is None
    calc = result.draft.calculation
    assert calc is not None and calc.value == pytest.approx(25.934, abs=1e-3)
    assert result.draft.presented.endswith("Computed: 21213 / 81797 * 100 = 25.93%.")
    figure = calc.as_figure()
    assert [(i.written, i.document, i.page) for i in figure.inputs] == [
        ("$21,213 million", "2023 Q3 AAPL.pdf", 3), ("$81,797 million", "2023 Q3 AAPL.pdf", 3), ("100", None, None)]
    assert "Calculation" not in result.draft.text  # the line is not part of the answer's words


def test_a_calculation_with_an_unquoted_input_is_refused_with_the_reason_and_the_answer_kept() -> None:
    raw = " Services were about a quarter of net sales.\nCalculation: 21,213 / 80,000 * 100\nSource: [1]"
    result = verdict(SHARE, "long", raw, [SALES], calculate=True)
    assert result.reason is None and result.draft.calculation is None
    assert result.draft.calculation_refused == "the calculation uses 80,000, which no quote states"
    assert "Computed" not in result.draft.presented


def test_no_calculation_unless_asked_for_and_switched_on() -> None:
    raw = " Services net sales were $21,213 million.\nCalculation: 21,213 / 81,797 * 100\nSource: [1]"
    assert verdict(SHARE, "long", raw, [SALES], calculate=False).draft.calculation is None
    other = "Describe Apple's Services sales in Q3 2023."
    assert verdict(other, "long", raw, [SALES], calculate=True).draft.calculation is None


def test_the_prompt_asks_for_a_calculation_only_where_one_is_wanted() -> None:
    asked = build_quote_messages(SHARE, [SALES], "long", calculate=True)[0]["content"]
    assert "Calculation:" in asked
    for question, form, calculate in ((SHARE, "long", False), ("Describe Apple's Services sales.", "long", True),
                                      ("What percentage of Apple's sales were Services?", "short", True)):
        assert "Calculation:" not in build_quote_messages(question, [SALES], form, calculate=calculate)[0]["content"]


def test_the_calculation_line_is_neither_answer_text_nor_streamed() -> None:
    raw = " Services were $21,213 million.\nCalculation: 21,213 / 81,797 * 100\nSource: [1]"
    assert answer_text(raw) == "Services were $21,213 million."
    stream = AnswerStream()
    shown = "".join(stream.feed(raw[i:i + 3]) for i in range(0, len(raw), 3))
    assert shown == "Services were $21,213 million."


# --- what the reader sees ---------------------------------------------------------------------------------------

STEAM = (
    "The Porter-Allen engine was introduced in 1862. Steam engines were used in mills and mines across Britain "
    "and beyond. The most successful indicator was developed for the high speed engine inventor and manufacturer "
    "Charles Porter by Charles Richard and exhibited at London Exhibition in 1862. Early versions were in use by "
    "1851, but the most successful indicator was developed later. It was used until the 1900s."
)


def test_excerpt_keeps_the_sentence_holding_the_answer_whole_and_marks_the_cuts() -> None:
    shown = excerpt(STEAM, "Charles Richard", limit=240)
    assert "Charles Porter by Charles Richard and exhibited at London Exhibition in 1862." in shown
    assert shown.startswith(ELLIPSIS) or shown.endswith(ELLIPSIS)
    body = shown.strip(f" {ELLIPSIS}")
    assert body in " ".join(STEAM.split())  # whole sentences of the text, nothing rewritten
    assert len(body) <= 240


def test_excerpt_of_a_short_text_is_the_text_and_without_an_answer_starts_at_the_start() -> None:
    assert excerpt("One sentence.", "x") == "One sentence."
    shown = excerpt(STEAM, "", limit=100)
    assert shown.startswith("The Porter-Allen engine") and shown.endswith(ELLIPSIS)


def test_excerpt_of_one_overlong_sentence_keeps_the_words_around_the_answer() -> None:
    row = " ".join(f"Segment {i} revenue {1000 + i:,}" for i in range(60)) + " Data Center 14,514 million"
    shown = excerpt(row, "14,514", limit=120)
    assert "14,514" in shown and shown.startswith(ELLIPSIS) and len(shown) <= 124


def test_a_bare_figure_is_followed_by_the_sentence_stating_it_not_a_dateline() -> None:
    release = Quote(
        text="SANTA CLARA, Calif., Nov. 21, 2023 (GLOBE NEWSWIRE) -- NVIDIA today reported results. Record "
        "quarterly Data Center revenue of $14.51 billion, up 41% from Q2.",
        document="NVDA.pdf", page_start=1, page_end=1, chunk_id=9, score=0.9,
    )
    shown = present("What was NVIDIA's Data Center revenue in Q3 2023?", "long", "$14.51 billion", [release])
    assert shown == "$14.51 billion. Record quarterly Data Center revenue of $14.51 billion, up 41% from Q2."
    assert present("What was NVIDIA's Data Center revenue in Q3 2023?", "long", shown, [release]) == shown
    assert is_heading("SANTA CLARA, Calif., Nov. 21, 2023 (GLOBE NEWSWIRE) -- NVIDIA today reported results.")
    assert not is_heading("Record quarterly Data Center revenue of $14.51 billion, up 41% from Q2.")
