"""Metrics of rag.evaluation.metrics, checked against values computed by hand."""

from __future__ import annotations

import pytest

from rag.evaluation.dataset import QAItem
from rag.evaluation.metrics import (
    PRIMARY_METRIC,
    Prediction,
    aggregate,
    best_over,
    exact_match,
    first_relevant_rank,
    normalize_answer,
    pages_meet,
    same_document,
    score_question,
    token_f1,
)
from rag.types import Answer, Citation


def _item(
    qid: str,
    *,
    answers: tuple[str, ...] = (),
    doc: str = "A.pdf",
    pages: tuple[int, ...] = (4,),
    style: str = "short",
) -> QAItem:
    return QAItem(
        id=qid,
        question=f"question {qid}?",
        answerable=bool(answers),
        answers=answers,
        doc=doc,
        pages=pages,
        evidence=None,
        answer_style=style,  # type: ignore[arg-type]
        source="test",
    )


def _cite(document: str, start: int, end: int) -> Citation:
    return Citation(document=document, page_start=start, page_end=end, snippet="...", score=1.0, chunk_id=0)


def _answer(text: str, *citations: Citation) -> Answer:
    return Answer(text=text, abstained=False, citations=citations)


_ABSTAIN = Answer(text="", abstained=True, citations=(), reason="not in the documents")


def _pred(
    qid: str,
    answer: Answer | None,
    retrieved: tuple[tuple[str, int, int], ...] = (),
    latency_s: float = 1.0,
) -> Prediction:
    return Prediction(id=qid, answer=answer, retrieved=retrieved, latency_s=latency_s)


# --- SQuAD normalisation, EM, token F1 -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The  Quick, brown-fox!", "quick brownfox"),  # punctuation is deleted, not replaced by a space
        ("  A cat and AN owl  ", "cat and owl"),
        ("the theatre", "theatre"),  # articles only as whole words
        ("Anthem of a nation", "anthem of nation"),
        ("The", ""),
        ("1,000 years.", "1000 years"),
    ],
)
def test_normalize_answer_follows_squad(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_exact_match_after_normalisation() -> None:
    assert exact_match("the Denver Broncos!", "Denver Broncos") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0
    assert exact_match("theatre", "atre") == 0.0


def test_token_f1_partial_overlap() -> None:
    # pred tokens: [norman, conquest, of, england] (4); gold tokens: [conquest, of, england, in, 1066] (5)
    # common 3 -> precision 3/4, recall 3/5, F1 = 2 * 0.75 * 0.6 / 1.35 = 0.9 / 1.35 = 2/3
    assert token_f1("The Norman conquest of England", "conquest of England in 1066") == pytest.approx(2 / 3)


def test_token_f1_counts_repeated_tokens_once_per_match() -> None:
    # pred [paris, paris, france] (3), gold [paris] (1): common = min(2, 1) = 1 -> P 1/3, R 1, F1 = 0.5
    assert token_f1("Paris Paris France", "Paris") == pytest.approx(0.5)


def test_token_f1_no_overlap_and_empty_cases() -> None:
    assert token_f1("London", "Paris") == 0.0
    # as in the official script: empty vs empty is 1, empty vs non-empty is 0 (articles alone normalise to empty)
    assert token_f1("", "") == 1.0
    assert token_f1("the", "") == 1.0
    assert token_f1("", "Paris") == 0.0
    assert token_f1("Paris", "") == 0.0


def test_best_over_takes_the_best_reference() -> None:
    refs = ["Deabolis", "the river Deabolis"]
    assert best_over(refs, "river Deabolis", exact_match) == 1.0
    # against "Deabolis": P 1/2, R 1 -> 2/3; against "river Deabolis": 1.0
    assert best_over(refs, "river Deabolis", token_f1) == 1.0
    assert best_over(["Deabolis"], "river Deabolis", token_f1) == pytest.approx(2 / 3)
    assert best_over([], "", exact_match) == 1.0  # no references: scored against "" as in SQuAD v2


# --- document and page matching --------------------------------------------------------------------------


def test_page_range_meets_gold_pages() -> None:
    assert pages_meet(3, 5, [4])
    assert not pages_meet(5, 6, [4])
    assert pages_meet(4, 4, [4])
    assert pages_meet(5, 6, [2, 6])
    assert pages_meet(9, 12, [])  # no gold pages: the document alone counts


def test_document_is_matched_by_file_name() -> None:
    assert same_document("sub/Normans.pdf", "Normans.pdf")
    assert same_document("Normans.pdf", "Normans.pdf")
    assert not same_document("sub/Normans.pdf", "Normans2.pdf")
    assert not same_document("Normans.pdf/other.pdf", "Normans.pdf")


def test_grounded_needs_a_citation_meeting_gold_pages() -> None:
    item = _item("q", answers=("Africa",), pages=(4,))
    assert score_question(item, _pred("q", _answer("Africa", _cite("A.pdf", 3, 5)))).grounded
    assert not score_question(item, _pred("q", _answer("Africa", _cite("A.pdf", 5, 6)))).grounded
    assert not score_question(item, _pred("q", _answer("Africa", _cite("B.pdf", 4, 4)))).grounded
    doc_level = _item("q", answers=("Africa",), pages=())
    assert score_question(doc_level, _pred("q", _answer("Africa", _cite("sub/A.pdf", 90, 91)))).grounded


# --- single-question verdicts ----------------------------------------------------------------------------


def test_abstention_on_answerable_question() -> None:
    item = _item("q", answers=("1066",))
    score = score_question(item, _pred("q", _ABSTAIN))
    assert score.abstained and not score.answered and not score.failed
    assert not score.correct and not score.grounded
    assert (score.em, score.f1) == (0.0, 0.0)

    unanswerable = _item("u")
    metrics = aggregate([item, unanswerable], [_pred("q", _ABSTAIN), _pred("u", _ABSTAIN)])
    assert metrics["abstention_precision"] == pytest.approx(0.5)  # 1 of 2 abstentions is on an unanswerable
    assert metrics["abstention_recall"] == pytest.approx(1.0)  # the only unanswerable question is abstained
    assert metrics["grounded_accuracy"] == pytest.approx(0.5)
    assert metrics["hallucination_rate"] == 0.0  # no answers given: 0/0 is 0.0

    alone = aggregate([item], [_pred("q", _ABSTAIN)])
    assert alone["abstention_precision"] == 0.0
    assert alone["abstention_recall"] == 0.0  # no unanswerable questions: 0/0 is 0.0


def test_answer_to_unanswerable_question_is_a_hallucination() -> None:
    item = _item("u", pages=(2,))
    score = score_question(item, _pred("u", _answer("Paris", _cite("A.pdf", 2, 2))))
    assert score.answered and not score.correct and not score.grounded
    metrics = aggregate([item], [_pred("u", _answer("Paris", _cite("A.pdf", 2, 2)))])
    assert metrics["hallucination_rate"] == 1.0
    assert metrics["grounded_accuracy"] == 0.0
    assert metrics["em"] == 0.0 and metrics["n_answerable"] == 0


def test_correct_answer_citing_wrong_page_is_not_grounded() -> None:
    item = _item("q", answers=("Norman conquest",), pages=(4,))
    pred = _pred("q", _answer("the Norman conquest", _cite("A.pdf", 5, 6)))
    score = score_question(item, pred)
    assert score.correct and not score.grounded
    assert score.em == 1.0
    metrics = aggregate([item], [pred])
    assert metrics["hallucination_rate"] == 1.0
    assert metrics["correct_rate"] == 1.0
    assert metrics["grounded_accuracy"] == 0.0


def test_short_answer_needs_f1_of_one_half() -> None:
    item = _item("q", answers=("Denver Broncos",))
    # "Broncos": P 1, R 1/2 -> F1 2/3 >= 0.5; "the Broncos team of Colorado": P 1/4, R 1/2 -> F1 1/3 < 0.5
    assert score_question(item, _pred("q", _answer("Broncos", _cite("A.pdf", 4, 4)))).correct
    assert not score_question(item, _pred("q", _answer("the Broncos team of Colorado"))).correct


def test_long_answer_without_citation_on_gold_doc_is_not_correct() -> None:
    gold = "Bone marrow is found within the spongy portions of bones"
    item = _item("q", answers=(gold,), doc="C.pdf", pages=(), style="long")
    text = "Marrow is in spongy bones."
    wrong_doc = score_question(item, _pred("q", _answer(text, _cite("D.pdf", 1, 1))))
    # gold 9 tokens, pred 5 tokens, 4 in common -> F1 = 2 * 4 / (9 + 5) = 4/7 >= 0.2
    assert wrong_doc.f1 == pytest.approx(4 / 7)
    assert not wrong_doc.correct and not wrong_doc.grounded
    right_doc = score_question(item, _pred("q", _answer(text, _cite("docs/C.pdf", 3, 3))))
    assert right_doc.correct and right_doc.grounded


def test_failed_question_is_neither_answer_nor_abstention() -> None:
    item = _item("q", answers=("1066",))
    score = score_question(item, _pred("q", None, retrieved=(("A.pdf", 4, 4),)))
    assert score.failed and not score.answered and not score.abstained
    assert not score.correct and not score.grounded and score.em == 0.0
    metrics = aggregate([item], [_pred("q", None, latency_s=30.0)])
    assert metrics["failed"] == 1
    assert metrics["grounded_accuracy"] == 0.0
    assert metrics["hallucination_rate"] == 0.0
    assert metrics["latency_p50_s"] == 0.0  # failed questions carry no latency


# --- retrieval ranks ------------------------------------------------------------------------------------


def test_first_relevant_rank() -> None:
    item = _item("q", answers=("x",), pages=(4,))
    retrieved = (("B.pdf", 4, 4), ("A.pdf", 5, 6), ("sub/A.pdf", 3, 4), ("A.pdf", 4, 4))
    assert first_relevant_rank(item, retrieved) == 3
    assert first_relevant_rank(item, retrieved[:2]) is None
    assert first_relevant_rank(_item("q", answers=("x",), pages=()), retrieved) == 2


def test_recall_at_k_and_mrr() -> None:
    items = [_item(f"q{i}", answers=("x",), pages=(4,)) for i in range(4)]
    other = ("B.pdf", 4, 4)
    hit = ("A.pdf", 4, 4)
    preds = [
        _pred("q0", _ABSTAIN, retrieved=(hit,)),  # rank 1
        _pred("q1", _ABSTAIN, retrieved=(other, other, hit)),  # rank 3
        _pred("q2", _ABSTAIN, retrieved=(other,) * 7 + (hit,)),  # rank 8
        _pred("q3", _ABSTAIN, retrieved=(other,) * 12 + (hit,)),  # rank 13: outside top 10
    ]
    metrics = aggregate(items, preds)
    assert metrics["recall@1"] == pytest.approx(1 / 4)
    assert metrics["recall@5"] == pytest.approx(2 / 4)
    assert metrics["recall@10"] == pytest.approx(3 / 4)
    # (1/1 + 1/3 + 1/8 + 1/13) / 4 = (312 + 104 + 39 + 24) / 312 / 4 = 479 / 1248
    assert metrics["mrr"] == pytest.approx(479 / 1248)


# --- aggregate over a hand-built set ---------------------------------------------------------------------


def test_aggregate_every_metric_by_hand() -> None:
    other = ("B.pdf", 1, 1)
    items = [
        _item("q1", answers=("Denver Broncos",)),
        _item("q2", answers=("1066",)),
        _item("q3", pages=(2,)),  # unanswerable
        _item("q4", answers=("Norman conquest",)),
        _item("q5", answers=("Bone marrow is found within the spongy portions of bones",), doc="C.pdf",
              pages=(), style="long"),
        _item("q6"),  # unanswerable
        _item("q7", answers=("Paris",)),
        _item("q8"),  # unanswerable
        _item("q9", answers=("The temple was built in 1950 by the king",), doc="C.pdf", pages=(), style="long"),
    ]
    preds = [
        # correct, grounded, EM 1; relevant at rank 1
        _pred("q1", _answer("the Denver Broncos", _cite("A.pdf", 3, 5)), (("A.pdf", 3, 5),), 1.0),
        # abstains on an answerable question; relevant at rank 2
        _pred("q2", _ABSTAIN, (other, ("A.pdf", 4, 4)), 2.0),
        # answers an unanswerable question: hallucination
        _pred("q3", _answer("Paris", _cite("A.pdf", 2, 2)), (("A.pdf", 2, 2),), 3.0),
        # correct (EM 1) but cites pages 5-6 for gold page 4: not grounded; relevant at rank 6
        _pred("q4", _answer("the Norman conquest", _cite("A.pdf", 5, 6)),
              (("A.pdf", 5, 6),) + (other,) * 4 + (("sub/A.pdf", 4, 4),), 4.0),
        # long, F1 4/7 but cites another document: not correct; nothing relevant retrieved
        _pred("q5", _answer("Marrow is in spongy bones.", _cite("D.pdf", 1, 1)), (), 5.0),
        # abstains on an unanswerable question: right
        _pred("q6", _ABSTAIN, (), 6.0),
        # failed; its latency does not count
        _pred("q7", None, (), 100.0),
        # failed on an unanswerable question: wrong, and not an abstention
        _pred("q8", None, (), 200.0),
        # long, tokens [it was built by king in 1950] vs [temple was built in 1950 by king]: 6 common of 7 and 7
        # -> F1 = 12/14 = 6/7, EM 0; cites the gold doc (doc-level gold): grounded; relevant at rank 1
        _pred("q9", _answer("It was built by the king in 1950.", _cite("docs/C.pdf", 10, 12)), (("C.pdf", 7, 7),),
              7.0),
    ]
    metrics = aggregate(items, list(reversed(preds)))  # predictions are matched by id, not by order

    assert PRIMARY_METRIC == "grounded_accuracy"
    assert metrics["n"] == 9
    assert metrics["n_answerable"] == 6  # q1 q2 q4 q5 q7 q9
    assert metrics["n_unanswerable"] == 3  # q3 q6 q8
    assert metrics["failed"] == 2  # q7 q8
    assert metrics["answered"] == 5  # q1 q3 q4 q5 q9
    assert metrics["abstained"] == 2  # q2 q6
    # grounded q1 q9 + abstention on unanswerable q6 = 3 of 9
    assert metrics["grounded_accuracy"] == pytest.approx(3 / 9)
    # correct q1 q4 q9 of 6 answerable
    assert metrics["correct_rate"] == pytest.approx(3 / 6)
    # answers not grounded q3 q4 q5 of 5 answers
    assert metrics["hallucination_rate"] == pytest.approx(3 / 5)
    # abstentions q2 q6, of which q6 unanswerable; unanswerable q3 q6 q8, of which q6 abstained
    assert metrics["abstention_precision"] == pytest.approx(1 / 2)
    assert metrics["abstention_recall"] == pytest.approx(1 / 3)
    # EM: q1 1 + q4 1 = 2 of 6; F1: (1 + 0 + 1 + 4/7 + 0 + 6/7) / 6 = (24/7) / 6 = 4/7
    assert metrics["em"] == pytest.approx(2 / 6)
    assert metrics["f1"] == pytest.approx(4 / 7)
    # ranks over answerable: q1 1, q2 2, q4 6, q5 -, q7 -, q9 1
    assert metrics["recall@1"] == pytest.approx(2 / 6)
    assert metrics["recall@5"] == pytest.approx(3 / 6)
    assert metrics["recall@10"] == pytest.approx(4 / 6)
    # (1 + 1/2 + 1/6 + 1) / 6 = (8/3) / 6 = 4/9
    assert metrics["mrr"] == pytest.approx(4 / 9)
    # latencies of non-failed questions: 1..7; p50 = 4; p95 at index 6 * 0.95 = 5.7 -> 6 + 0.7 * (7 - 6) = 6.7
    assert metrics["latency_p50_s"] == pytest.approx(4.0)
    assert metrics["latency_p95_s"] == pytest.approx(6.7)


def test_aggregate_rejects_missing_and_unknown_predictions() -> None:
    items = [_item("q1", answers=("x",)), _item("q2")]
    with pytest.raises(ValueError, match="q2"):
        aggregate(items, [_pred("q1", _ABSTAIN)])
    with pytest.raises(ValueError, match="zz"):
        aggregate(items, [_pred("q1", _ABSTAIN), _pred("q2", _ABSTAIN), _pred("zz", _ABSTAIN)])
    with pytest.raises(ValueError, match="two predictions"):
        aggregate(items, [_pred("q1", _ABSTAIN), _pred("q1", _ABSTAIN), _pred("q2", _ABSTAIN)])


# --- the numeric rule (README "Numbers") ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reference", "passes"),
    [
        ("1,375,500", "1375500.00", True),  # separators and trailing zero decimals ignored
        ("Revenue was $1,375,500 thousand.", "1375500.00", True),  # one of the numbers it states
        ("30.8%", "30.80", True),
        ("$5,466 million", "$5,466", True),  # a scale word is not applied, the number still matches
        ("-3.2", "-3.2", True),
        ("3.2", "-3.2", False),  # the sign counts
        ("1,381,000", "1375500.00", True),  # 5,500 / 1,381,000 = 0.398%: within 0.5%
        ("1,390,000", "1375500.00", False),  # 14,500 / 1,390,000 = 1.04%: not
        ("$2.0 billion", "2018", False),  # scale words are not converted
        ("about 100", "100.4", True),  # 0.4% relative difference is within 0.5%
        ("about 100", "100.6", False),  # 0.6% is not
    ],
)
def test_numeric_reference_matches_a_stated_number(answer: str, reference: str, passes: bool) -> None:
    from rag.evaluation.metrics import states_number

    assert states_number(answer, reference) is passes


def test_numeric_rule_makes_a_long_answer_correct_where_token_f1_cannot() -> None:
    # Token F1 alone: "1,375,500" normalises to "1375500" and "1375500.00" to "137550000": no overlap.
    item = _item("q", answers=("1375500.00",), doc="F.pdf", pages=(), style="long")
    score = score_question(item, _pred("q", _answer("Total was 1,375,500.", _cite("F.pdf", 2, 2))))
    assert score.f1 == 0.0  # the reported F1 stays the SQuAD token F1
    assert score.correct and score.grounded
    short = _item("s", answers=("30.8%",))
    assert score_question(short, _pred("s", _answer("30.80", _cite("A.pdf", 4, 4)))).correct
    assert not score_question(short, _pred("s", _answer("31.2", _cite("A.pdf", 4, 4)))).correct
    # a reference that is not one number gets no numeric rule: "1066" vs 4 tokens, F1 2/5 < 0.5
    words = _item("w", answers=("in 1066 at Hastings",))
    assert not score_question(words, _pred("w", _answer("1066", _cite("A.pdf", 4, 4)))).correct
