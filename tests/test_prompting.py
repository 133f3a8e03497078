"""The prompt, answer parsing, streaming clean-up and the lexical verifier."""

from __future__ import annotations


import pytest

from rag.answering.prompting import (
    AnswerStream, answer_text, build_messages, cited_numbers, fit_passages, is_abstention,
)
from rag.types import Chunk, Passage
from rag.answering.verification import Verifier, attribute, lexical_support


def passage(text: str, page: int = 1, cid: int = 1) -> Passage:
    chunk = Chunk("doc.pdf", "h", page, page, 0, len(text), text, 0, id=cid)
    return Passage(chunk=chunk, score=1.0, dense_score=0.5)


P1 = passage("The Normans were led by William the Conqueror at the Battle of Hastings in 1066.", 4, 1)
P2 = passage("Steam engines use steam pressure to drive a piston.", 9, 2)


def test_messages_number_the_passages_and_allow_abstaining():
    system, user = build_messages("Who led the Normans?", [P1, P2])
    assert "NOT IN DOCUMENTS" in system["content"] and "only the numbered passages" in system["content"]
    assert user["content"].index("[1] The Normans") < user["content"].index("[2] Steam")
    assert user["content"].endswith("Question: Who led the Normans?")


def test_fit_passages_keeps_best_first_within_budget():
    words = lambda text: len(text.split())  # noqa: E731 - a stand-in token counter
    long = passage("word " * 400, cid=3)
    kept = fit_passages("q", [P1, long, P2], words, budget=200)
    assert kept == [P1]  # the long one does not fit, and nothing after it is taken out of order
    assert fit_passages("q", [long], words, budget=10) == [long]  # the best passage is always kept


@pytest.mark.parametrize("raw,expected", [
    ("Answer: William the Conqueror\nSource: [1]", "William the Conqueror"),
    ("William the Conqueror [1].", "William the Conqueror."),
    ("answer:1066 [2][1]", "1066"),
])
def test_answer_text_strips_labels_and_markers(raw, expected):
    assert answer_text(raw) == expected


def test_cited_numbers_keeps_valid_ones_in_order():
    assert cited_numbers("x [2] y [1] z [2] [9]", n_passages=3) == [2, 1]


@pytest.mark.parametrize("text,abstains", [
    ("Answer: NOT IN DOCUMENTS", True),
    ("The passages do not mention the capital.", True),
    ("This is not found in the context.", True),
    ("", True),
    ("William the Conqueror", False),
    ("Documents were not signed until 1066", False),
])
def test_is_abstention(text, abstains):
    assert is_abstention(text) is abstains


@pytest.mark.parametrize("raw", [
    "Answer: Duke William II of Normandy\nSource: [2]",
    "William [1] of Normandy.",
    "France",
    "Answer: 1066 [1][2]",
])
def test_stream_deltas_join_to_the_final_answer(raw):
    stream = AnswerStream()
    streamed = "".join(stream.feed(ch) for ch in raw)
    assert streamed == answer_text(raw)


def test_stream_never_shows_the_abstention_marker():
    stream = AnswerStream()
    assert "".join(stream.feed(ch) for ch in "Answer: NOT IN DOCUMENTS") == ""


def test_lexical_support_and_attribution():
    assert lexical_support("William the Conqueror", [P1]) == 1.0
    assert lexical_support("Canberra", [P1, P2]) == 0.0  # an answer from memory uses words the passages lack
    assert lexical_support("the", [P1]) == 0.0  # no content words, no support
    # An answer that only restates the question adds nothing, so nothing supports it.
    assert lexical_support("The Normans were led", [P1], question="Who led the Normans?") == 0.0
    assert lexical_support("William led the Normans", [P1], question="Who led the Normans?") == 1.0
    assert attribute("William the Conqueror", [P2, P1], cited=[]) == [2]  # by content, not by rank
    assert attribute("anything", [P1, P2], cited=[2]) == [2]  # the model's own markers win
    assert attribute("Canberra", [P1, P2], cited=[]) == []


def test_verifier_without_judge_is_lexical():
    verifier = Verifier(judge=None, render=None)
    assert verifier.support("Who?", "William the Conqueror", [P1]) == 1.0
    assert verifier.support("Who?", "William", []) == 0.0
    with pytest.raises(ValueError):
        Verifier(judge=lambda prompts: [0.5], render=None)


def test_citation_snippet_shows_the_answer():
    from rag.answering.service import SNIPPET_CHARS, snippet

    text = "filler " * 100 + "the most successful indicator was developed by Charles Porter in 1862. " + "more " * 50
    shown = snippet(text, "Charles Porter")
    assert "Charles Porter" in shown and len(shown) == SNIPPET_CHARS
    assert snippet(text, "Nowhere Inc.") == text[:SNIPPET_CHARS]  # not in the passage: its start
    assert snippet("short passage", "passage") == "short passage"
