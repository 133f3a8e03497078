"""Confidence features, the calibrator file, and fitting it with cross-set validation (hand-checkable cases)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from rag.answering.confidence import (
    DEFAULT_CALIBRATOR, Calibrator, answer_in_evidence, coverage, question_names, type_match,
)
from rag.evaluation.calibration import (
    Labeled, calibrator_from_fit, choose_threshold, cross_set, held_out_questions, outcome, reliability,
)
from rag.types import Quote


def _quote(text: str) -> Quote:
    return Quote(text=text, document="A.pdf", page_start=1, page_end=1, chunk_id=1, score=0.5)


def test_question_names_and_coverage_catch_a_swapped_name() -> None:
    # SQuAD 2.0's unanswerable questions swap a name or a number: coverage of them falls.
    assert question_names("Who founded Cambridge in 1650?") == {"cambridge"}
    evidence = "Harvard was founded in 1636 in Cambridge."
    assert coverage({"cambridge"}, evidence) == 1.0
    assert coverage({"1650"}, evidence) == 0.0
    assert coverage(set(), evidence) == 1.0  # nothing asked, nothing missing


def test_answer_in_evidence_uses_squad_normalisation() -> None:
    quotes = [_quote("The indicator was built by Charles Richard, an engineer.")]
    assert answer_in_evidence("charles richard", quotes)
    assert answer_in_evidence("The Charles Richard.", quotes)  # article and punctuation ignored
    assert not answer_in_evidence("Charles Porter", quotes)


def test_type_match() -> None:
    assert type_match("How many rooms are there?", "12 rooms") == 1.0
    assert type_match("How many rooms are there?", "several") == 0.0
    assert type_match("When was it built?", "in 1862") == 1.0
    assert type_match("Who built it?", "an engineer") == 0.0
    assert type_match("What is it?", "a engine") == 0.5


def test_calibrator_confidence_by_hand_and_file_round_trip(tmp_path: Path) -> None:
    model = Calibrator(names=("a", "b"), mean=(1.0, 0.0), scale=(2.0, 1.0), coef=(1.0, -0.5), intercept=0.25,
                       threshold=0.4, version="test")
    # z = 0.25 + 1.0 * (3 - 1) / 2 - 0.5 * (2 - 0) / 1 = 0.25
    assert model.confidence({"a": 3.0, "b": 2.0}) == pytest.approx(1 / (1 + math.exp(-0.25)))
    with pytest.raises(KeyError):
        model.confidence({"a": 1.0})
    path = tmp_path / "c.json"
    path.write_text(json.dumps(model.to_json()))
    assert Calibrator.load(path) == Calibrator(**{**model.__dict__, "provenance": {}})
    path.write_text("{}")
    with pytest.raises(ValueError, match="cannot read calibrator"):
        Calibrator.load(path)
    with pytest.raises(ValueError, match="threshold"):
        Calibrator(("a",), (0.0,), (1.0,), (1.0,), 0.0, threshold=1.5)


def test_outcome_by_hand() -> None:
    rows = [
        Labeled("s", "1", {}, answered=True, grounded=True, answerable=True),
        Labeled("s", "2", {}, answered=True, grounded=False, answerable=False),
        Labeled("s", "3", {}, answered=True, grounded=False, answerable=True),
        Labeled("s", "4", {}, answered=False, grounded=False, answerable=False),
    ]
    # at 0.5: answers 1 (0.9, grounded) and 3 (0.6, wrong); abstains on 2 (0.2, unanswerable: right) and 4
    result = outcome(rows, [0.9, 0.2, 0.6, 0.99], 0.5)
    assert (result.grounded_accuracy, result.hallucination_rate, result.correct_rate, result.answered) == (
        0.75, 0.5, 0.5, 2)


def _synthetic(set_name: str, n: int, seed: int, shift: float = 0.0) -> list[Labeled]:
    """Rows where feature x predicts groundedness (plus noise); half the questions unanswerable."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        answerable = i % 2 == 0
        grounded = answerable and rng.random() < 0.7
        x = (1.5 if grounded else -0.5) + rng.gauss(0, 1) + shift
        rows.append(Labeled(set_name, f"{set_name}-{i}", {"x": x, "noise": rng.gauss(0, 1)}, True, grounded,
                            answerable))
    return rows


def test_fit_learns_the_informative_feature_and_cross_set_scores_held_out_sets() -> None:
    rows = _synthetic("a", 300, 1) + _synthetic("b", 300, 2) + _synthetic("c", 300, 3, shift=0.2)
    model = calibrator_from_fit(rows, ["x", "noise"], target_hallucination=0.2)
    assert model.coef[0] > 1.0 and abs(model.coef[1]) < 0.3
    held = cross_set(rows, ["x", "noise"], target_hallucination=0.2)
    assert [h.set_name for h in held] == ["a", "b", "c"]
    for h in held:
        test = [r for r in rows if r.set_name == h.set_name]
        everything = outcome(test, [1.0] * len(test), 0.0)
        assert h.outcome.grounded_accuracy > everything.grounded_accuracy  # abstaining on low confidence pays
        assert h.interval[0] <= h.outcome.grounded_accuracy <= h.interval[1]


def test_every_set_weighs_the_same_in_the_fit() -> None:
    """A large set where the feature says nothing must not drown a small one where it says everything."""
    from rag.evaluation.calibration import fit

    rng = random.Random(3)
    noisy = [Labeled("big", f"b{i}", {"x": rng.gauss(0, 1)}, True, rng.random() < 0.5, True) for i in range(900)]
    clear = [Labeled("small", f"s{i}", {"x": (1.0 if i % 2 else -1.0) + rng.gauss(0, 0.3)}, True, bool(i % 2), True)
             for i in range(100)]
    _, _, coef, _ = fit(noisy + clear, ["x"])
    # unweighted, the 900 noisy rows hold the slope near 0.1; weighted, the clear set counts for half
    assert coef[0] > 1.0


def test_held_out_questions_scores_every_question_once_with_a_model_that_did_not_see_it() -> None:
    rows = _synthetic("a", 200, 5) + _synthetic("b", 200, 6, shift=0.3)
    folded = held_out_questions(rows, ["x", "noise"], folds=5)
    assert [h.set_name for h in folded] == ["a", "b"]
    for h in folded:
        test = [r for r in rows if r.set_name == h.set_name]
        assert h.outcome.n == len(test) == len(h.confidence)
        everything = outcome(test, [1.0] * len(test), 0.0)
        assert h.outcome.grounded_accuracy > everything.grounded_accuracy
        assert h.interval[0] <= h.outcome.grounded_accuracy <= h.interval[1]
    assert sum(h.outcome.n for h in folded) == len(rows)


def test_choose_threshold_maximises_accuracy_or_meets_the_hallucination_target() -> None:
    rows = _synthetic("a", 400, 4)
    model = calibrator_from_fit(rows, ["x"])
    confidence = [model.confidence(r.features) for r in rows]
    best = choose_threshold(rows, confidence)
    grid = [t / 100 for t in range(100)]
    assert outcome(rows, confidence, best).grounded_accuracy == max(
        outcome(rows, confidence, t).grounded_accuracy for t in grid)
    threshold = choose_threshold(rows, confidence, target_hallucination=0.1)
    assert outcome(rows, confidence, threshold).hallucination_rate <= 0.1
    assert threshold >= choose_threshold(rows, confidence, 0.4)
    # an unreachable target is dropped: the most accurate threshold again
    assert choose_threshold(rows, confidence, target_hallucination=-1.0) == best


def test_reliability_bins() -> None:
    table = reliability([0.05, 0.15, 0.12, 0.95], [False, True, False, True], bins=10)
    assert table == [(0.05, 0.0, 1), (pytest.approx(0.135), 0.5, 2), (0.95, 1.0, 1)]


def test_a_question_run_again_counts_once_as_the_later_folder_has_it(tmp_path: Path) -> None:
    """evals.calibrate's folders: a question generated again after a change replaces its earlier record."""
    from evals.calibrate import latest_records

    def run(folder: str, records: list[dict]) -> Path:
        partial = tmp_path / folder / "partial"
        partial.mkdir(parents=True)
        (partial / "sec10q-dev.ours.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return tmp_path / folder

    old = run("old", [{"id": "q1", "answer": "old"}, {"id": "q2", "answer": "kept"}])
    new = run("new", [{"id": "q1", "answer": "new"}])
    latest = {r["id"]: r["answer"] for r in latest_records([old, new])}
    assert latest == {"q1": "new", "q2": "kept"} and len(latest_records([old, new])) == 2
    assert {r["id"]: r["answer"] for r in latest_records([new, old])}["q1"] == "old"  # the last named wins


def test_the_shipped_calibrator_loads_and_says_how_it_was_made() -> None:
    if not DEFAULT_CALIBRATOR.exists():
        pytest.skip("no packaged calibrator")
    model = Calibrator.load(DEFAULT_CALIBRATOR)
    assert model.provenance and "evals.calibrate" in str(model.provenance["command"])
    assert 0.0 < model.threshold < 1.0 and len(model.names) == len(model.coef)


class _ScriptedBatcher:
    """The generator's reply fixed, so the test is about what the service does with it."""

    def __init__(self, reply: str):
        self.reply = reply

    def admit(self, max_new_tokens: int, timeout_s: float | None = None) -> None:
        return None  # admits everything, reserving nothing

    async def stream(self, prompt, max_new_tokens, timeout_s=None, admission=None):
        from rag.generation.base import GenerationResult

        yield GenerationResult(self.reply, len(prompt), 4, "stop", token_logprobs=(-0.1, -0.1), probe_probability=0.1)


def test_a_span_repeating_the_question_abstains_with_its_reason(runtime) -> None:
    """Real retrieval and evidence over the small index; the generator's span only repeats the question."""
    import asyncio

    from rag.answering.service import AnswerService

    def ask(reply: str):
        service = AnswerService(runtime.retriever, runtime.llm, _ScriptedBatcher(reply), runtime.settings,
                                calibrator=None)
        return asyncio.run(service.answer("Who notably improved the Savery water pump?"))

    echoed = ask("Answer: Savery\nSource: [1]")
    assert echoed.abstained and "repeats the question" in echoed.reason and echoed.draft == "Savery"
    answered = ask("Answer: Bento de Moura Portugal\nSource: [1]")
    assert not answered.abstained and answered.text == "Bento de Moura Portugal"


def test_a_span_whose_figure_the_quotes_lack_abstains_and_a_sentence_answer_names_its_unquoted_figures(
    runtime,
) -> None:
    """Real retrieval and evidence over the small index (the quote says HMS Dreadnought "of 1905"); the
    generator's reply is fixed. A span stating another year is not given; a sentence answer is given with the
    figure it states that no quote holds."""
    import asyncio

    from rag.answering.service import AnswerService

    def ask(question: str, reply: str):
        service = AnswerService(runtime.retriever, runtime.llm, _ScriptedBatcher(reply), runtime.settings,
                                calibrator=None)
        return asyncio.run(service.answer(question))

    span = "In what year was HMS Dreadnought launched?"
    invented = ask(span, "Answer: 1907\nSource: [1]")
    assert invented.abstained and "figure is not in the quotes" in invented.reason and invented.draft == "1907"
    quoted = ask(span, "Answer: 1905\nSource: [1]")
    assert not quoted.abstained and quoted.text == "1905" and quoted.unquoted_figures == ()
    sentences = ask("Why did HMS Dreadnought replace the reciprocating engine?",
                    "Answer: HMS Dreadnought of 1905 used the steam turbine, which cost $9 million.\nSource: [1]")
    assert not sentences.abstained and sentences.form == "long"
    assert sentences.unquoted_figures == ("$9 million",)


def test_calibrate_counts_a_span_with_an_unquoted_figure_as_declined() -> None:
    """evals.calibrate re-reads older records as the service now answers: such a span is declined."""
    from evals.calibrate import labeled

    quote = {"text": "HMS Dreadnought of 1905 was the first major warship.", "document": "Steam_engine.pdf",
             "page_start": 10, "page_end": 10, "chunk_id": 3, "score": 0.6}
    record = {"id": "q", "set": "squad2-dev", "question": "In what year was HMS Dreadnought launched?",
              "answerable": True, "abstained": False, "form": "short", "error": None, "features": {"relevance": 0.6},
              "score": {"grounded": False}, "quotes": [quote], "citations": []}
    assert not labeled({**record, "answer": "1907"}).answered
    assert labeled({**record, "answer": "1905", "score": {"grounded": True}}).answered
