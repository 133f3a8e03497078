"""The evaluator, the offline threshold sweep, the typed report and its writer, and the baseline.

Fast tests use hand-built records and fake pipelines; the baseline's page mapping reads a real PDF. The
rag-eval command is in test_eval_cli.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from rag.evaluation import (
    EvalReport, Evaluator, QuestionRecord, RunOptions, SetReport, Sweep, apply_thresholds, best_point,
    sweep_thresholds,
)
from rag.evaluation.dataset import EvalSet, QAItem
from rag.evaluation.metrics import PRIMARY_METRIC, Prediction, aggregate, score_question
from rag.evaluation.pipelines import answer_from_json
from rag.evaluation.records import make_record
from rag.evaluation.sweep import default_grid
from rag.types import Answer, Citation
from tests.conftest import eval_set

METRIC_KEYS = set(aggregate([QAItem("q", "q?", False, (), "A.pdf", (), None, "short", "t")],
                            [Prediction("q", None, (), 0.0)]))


# ----------------------------------------------------------------------------------------------- helpers


def _item(qid: str, answers: tuple[str, ...] = (), doc: str = "A.pdf", pages: tuple[int, ...] = (4,)) -> QAItem:
    return QAItem(
        id=qid, question=f"question {qid}?", answerable=bool(answers), answers=answers, doc=doc, pages=pages,
        evidence=None, answer_style="short", source="test",
    )


def _answer(text: str, *, confidence: float | None, relevance: float | None, page: int = 4) -> Answer:
    cite = Citation(document="A.pdf", page_start=page, page_end=page, snippet="...", score=0.5, chunk_id=1)
    return Answer(text=text, abstained=False, citations=(cite,), confidence=confidence, relevance=relevance)


def _abstention() -> Answer:
    return Answer(text="The documents do not contain the answer.", abstained=True, citations=(), reason="gate")


def _record(item: QAItem, answer: Answer | None, error: str | None = None) -> QuestionRecord:
    pred = Prediction(id=item.id, answer=answer, retrieved=(("A.pdf", 4, 4),), latency_s=1.0)
    return make_record(item, pred, score_question(item, pred), error)


def _eval_set(items: list[QAItem]) -> EvalSet:
    return EvalSet(name="handmade", root=Path("handmade"), docs_dir=Path("handmade/docs"), items=tuple(items))


# A grounded answer with weak support, a hallucinated answer to an unanswerable question with a weakly
# relevant best passage, an abstention and a failure.
ITEMS = [_item("good", ("Paris",)), _item("trap"), _item("skip"), _item("broken", ("Rome",))]
RECORDS = [
    _record(ITEMS[0], _answer("Paris", confidence=0.3, relevance=0.6)),
    _record(ITEMS[1], _answer("Lyon", confidence=0.8, relevance=0.2)),
    _record(ITEMS[2], _abstention()),
    _record(ITEMS[3], None, error="RuntimeError: boom"),
]


# ----------------------------------------------------------------------------------------- offline sweep


def test_low_confidence_answer_becomes_abstention_at_higher_threshold():
    record = RECORDS[0]
    kept = apply_thresholds(record, min_relevance=0.0, min_confidence=0.2)
    assert kept.answer is not None and not kept.answer.abstained and kept.answer.text == "Paris"
    gated = apply_thresholds(record, min_relevance=0.0, min_confidence=0.5)
    assert gated.answer is not None and gated.answer.abstained
    assert gated.answer.draft == "Paris" and "confidence" in gated.answer.reason
    assert gated.retrieved == record.retrieved  # retrieval metrics do not depend on the thresholds


def test_low_relevance_answer_becomes_abstention_and_others_stay():
    gated = apply_thresholds(RECORDS[1], min_relevance=0.3, min_confidence=0.0)
    assert gated.answer is not None and gated.answer.abstained and "relevance" in gated.answer.reason
    assert apply_thresholds(RECORDS[2], 0.9, 0.9).answer.abstained  # an abstention stays one
    assert apply_thresholds(RECORDS[3], 0.9, 0.9).answer is None  # a failure stays a failure
    unknown = _record(_item("x", ("y",)), _answer("y", confidence=None, relevance=None))
    assert not apply_thresholds(unknown, 0.9, 0.9).answer.abstained  # unreported scores do not gate


def test_sweep_recomputes_metrics_over_the_grid():
    points = sweep_thresholds(ITEMS, RECORDS, [0.0, 0.3], [0.0, 0.5])
    by = {(p.min_relevance, p.min_confidence): p.metrics for p in points}
    assert len(points) == 4 and set(by[(0.0, 0.0)]) == METRIC_KEYS
    # open gates: "good" (grounded) and "skip" (abstained, unanswerable) are right; "trap" is a hallucination
    assert by[(0.0, 0.0)][PRIMARY_METRIC] == pytest.approx(2 / 4)
    assert by[(0.0, 0.0)]["hallucination_rate"] == pytest.approx(1 / 2)
    # relevance gate 0.3 turns "trap" into a right abstention and keeps "good"
    assert by[(0.3, 0.0)][PRIMARY_METRIC] == pytest.approx(3 / 4)
    assert by[(0.3, 0.0)]["hallucination_rate"] == 0.0 and by[(0.3, 0.0)]["answered"] == 1
    # confidence 0.5 also drops "good" (confidence 0.3): grounded accuracy falls back
    assert by[(0.3, 0.5)][PRIMARY_METRIC] == pytest.approx(2 / 4) and by[(0.3, 0.5)]["answered"] == 0
    assert all(m["failed"] == 1 for m in by.values())
    best = best_point(points)
    assert (best.min_relevance, best.min_confidence) == (0.3, 0.0)


def test_sweep_needs_a_record_per_question():
    with pytest.raises(ValueError, match="no record"):
        sweep_thresholds(ITEMS, RECORDS[:2], [0.0], [0.0])


def test_default_grid_holds_the_configured_value():
    grid = default_grid(0.33, 0.0, 0.2, 0.1)
    assert grid == [0.0, 0.1, 0.2, 0.33]


def test_record_round_trips_through_json():
    for record in RECORDS:
        again = QuestionRecord.from_dict(json.loads(json.dumps(record.to_dict())))
        assert again == record
        assert score_question(ITEMS[RECORDS.index(record)], again.to_prediction()) == score_question(
            ITEMS[RECORDS.index(record)], record.to_prediction()
        )


# --------------------------------------------------------------------------------------------- evaluator


class FlakyPipeline:
    """Answers "Paris" with a citation on page 4; raises on "broken", hangs on "slow"."""

    name = "flaky"

    async def ask(self, question: str):
        if "broken" in question:
            raise RuntimeError("boom")
        if "slow" in question:
            await asyncio.sleep(10)
        return _answer("Paris", confidence=0.9, relevance=0.9), [("A.pdf", 1, 1), ("A.pdf", 4, 4)]


def test_failing_questions_are_recorded_and_the_run_continues():
    items = [_item("first", ("Paris",)), _item("broken", ("Paris",)), _item("slow", ("Paris",)), _item("last")]
    seen = []
    evaluator = Evaluator(_eval_set(items), concurrency=2, timeout_s=0.5, on_record=seen.append)
    result = evaluator(FlakyPipeline())
    assert [r.id for r in result.records] == ["first", "broken", "slow", "last"]  # set order, not completion
    assert len(seen) == 4
    first, broken, slow, last = result.records
    assert broken.failed and broken.error == "RuntimeError: boom" and broken.score["failed"]
    assert slow.failed and "timed out" in slow.error
    assert first.score["grounded"] and first.error is None and first.retrieved[1] == ("A.pdf", 4, 4)
    assert not last.abstained and not last.score["right"]  # answered an unanswerable question
    m = result.metrics
    assert m["failed"] == 2 and m["n"] == 4 and m[PRIMARY_METRIC] == pytest.approx(1 / 4)
    assert m["recall@1"] == 0.0 and m["mrr"] == pytest.approx(0.5 / 3)  # only "first" retrieved; rank 2
    assert result.pipeline == "flaky" and result.primary == m[PRIMARY_METRIC]


def test_answer_from_query_response():
    body = {
        "answer": "Africa", "abstained": False, "reason": None, "support": 0.8, "relevance": 0.6,
        "citations": [{"document": "Normans.pdf", "pages": [6, 7], "snippet": "s", "score": 0.6, "chunk_id": 3}],
        "timings": {"total_s": 1.0},
    }
    answer = answer_from_json(body)
    assert answer.text == "Africa" and answer.citations[0].page_start == 6 and answer.citations[0].page_end == 7
    assert answer.support == 0.8 and answer.timings == {"total_s": 1.0}


def test_http_pipeline_posts_the_question_and_reads_citations():
    import httpx

    from rag.evaluation import HttpPipeline

    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["auth"] = request.headers.get("authorization")
        seen["body"] = json.loads(request.content)
        if seen["body"]["question"] == "fail?":
            return httpx.Response(503, json={"detail": "overloaded"})
        return httpx.Response(200, json={
            "answer": "Africa", "abstained": False, "reason": None, "support": 0.8, "relevance": 0.6, "timings": {},
            "citations": [{"document": "Normans.pdf", "pages": [6, 6], "snippet": "s", "score": 0.6, "chunk_id": 3}],
        })

    async def run():
        pipeline = HttpPipeline("http://rag.test/", "k3y", max_new_tokens=16, transport=httpx.MockTransport(handler))
        try:
            answer, retrieved = await pipeline.ask("What continent?")
            with pytest.raises(RuntimeError, match="HTTP 503"):
                await pipeline.ask("fail?")
        finally:
            await pipeline.aclose()
        return answer, retrieved

    answer, retrieved = asyncio.run(run())
    assert answer.text == "Africa" and retrieved == [("Normans.pdf", 6, 6)]
    assert seen["auth"] == "Bearer k3y" and seen["body"]["max_new_tokens"] == 16


# ------------------------------------------------------------------------------------------ report writer


def _hand_report() -> EvalReport:
    """A typed report of RECORDS: ours, a "baseline" with the same records, and a 2 x 2 sweep."""
    from rag.settings import Settings

    result = Evaluator(_eval_set(ITEMS)).result("ours", RECORDS, wall_s=3.0)
    baseline = Evaluator(_eval_set(ITEMS)).result("baseline", RECORDS, wall_s=2.0)
    points = sweep_thresholds(ITEMS, RECORDS, [0.0, 0.3], [0.0, 0.5])
    sweep = Sweep(
        configured=points[-1], relevance_grid=(0.0, 0.3), confidence_grid=(0.0, 0.5), points=tuple(points),
        best=best_point(points), ties=1, span={"min_relevance": (0.3, 0.3), "min_confidence": (0.0, 0.0)},
        open_run=result,
    )
    entry = SetReport(
        name="handmade", root=Path("handmade"), questions_in_set=4, items=tuple(ITEMS), limit=None, seed=0,
        results={"ours": result, "baseline": baseline}, sweep=sweep,
    )
    return EvalReport(
        date="2026-01-01T00:00:00+00:00", command="rag-eval --set x",
        machine={"platform": "Linux", "cpu_count": 2, "torch": "2", "device": "cpu", "gpu": None},
        settings=Settings().model_dump(mode="json"), run=RunOptions(pipelines=("ours", "baseline")), sets=[entry],
    )


def test_report_writer_writes_json_markdown_and_plots(tmp_path):
    from rag.evaluation.render import write_report

    paths = write_report(tmp_path / "out", _hand_report())
    names = {p.name for p in paths}
    assert {"report.json", "report.md", "metrics-handmade.png", "sweep-handmade.png", "sweep-handmade.json"} <= names
    for path in paths:
        assert path.stat().st_size > 0
    assert (tmp_path / "out" / "metrics-handmade.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["sets"][0]["results"]["ours"]["metrics"][PRIMARY_METRIC] == pytest.approx(0.5)
    assert len(data["sets"][0]["results"]["ours"]["records"]) == 4
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| metric | ours | baseline |" in md
    assert f"| **{PRIMARY_METRIC}** | 0.500 | 0.500 |" in md
    for key in METRIC_KEYS:
        assert f"| {key} |" in md or f"| **{key}** |" in md
    assert "Abstention trade-off" in md and "| best | 0.30 | 0.00 |" in md
    sweep = json.loads((tmp_path / "out" / "sweep-handmade.json").read_text())
    assert len(sweep["points"]) == 4 and "records" not in sweep["open_run"]


# --------------------------------------------------------------------------------------------- baseline


def test_baseline_maps_pypdf_pages_to_one_based_pages():
    from rag.evaluation.baseline import document_name, load_pages, page_number, split_pages, to_citation

    docs = eval_set("squad2-dev") / "docs"
    pages = load_pages_of(docs, "Normans.pdf", load_pages)
    assert [p.metadata["page"] for p in pages] == list(range(len(pages)))  # PyPDFLoader: 0-based
    assert page_number(pages[0]) == 1 and document_name(pages[0]) == "Normans.pdf"
    chunks = split_pages(pages)
    assert all(len(c.page_content) <= 1000 for c in chunks)
    # The evidence of "What continent are the Canarian Islands off the coast of?" is on (1-based) page 6.
    canary = [c for c in chunks if "Bethencourt" in c.page_content]
    assert canary and {page_number(c) for c in canary} == {6}
    citation = to_citation(canary[0], 0.5)
    assert (citation.document, citation.page_start, citation.page_end) == ("Normans.pdf", 6, 6)
    assert len({c.metadata["chunk_id"] for c in chunks}) == len(chunks)


def load_pages_of(docs: Path, name: str, load_pages):
    """load_pages on a folder holding only ``name`` (a temporary copy)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(docs / name, Path(folder) / name)
        return load_pages(Path(folder))


# ------------------------------------------------------------------------------------------------ sweep


class OpenGates:
    """A fake open-gates run of ours: answers each question as RECORDS did (raising for the failed one)."""

    name = "ours (gates open)"
    answers = {item.question: record.to_prediction() for item, record in zip(ITEMS, RECORDS)}

    async def ask(self, question):
        pred = self.answers[question]
        if pred.answer is None:
            raise RuntimeError("boom")
        return pred.answer, list(pred.retrieved)


def test_sweep_of_an_open_gates_run_picks_the_best_thresholds(tmp_path):
    """A run's records land in partial/ as they finish; the sweep re-scores them over the default grid."""
    from rag.evaluation.run import _Run

    options = RunOptions(pipelines=("ours",), concurrency=2, timeout_s=5.0, partial_dir=tmp_path / "partial")
    result = asyncio.run(_Run(options, None, lambda: None, print).run(_eval_set(ITEMS), ITEMS, OpenGates()))
    partial = (tmp_path / "partial" / "handmade.ours_gates_open_.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in partial) == sorted(item.id for item in ITEMS)

    configured = (0.6, 0.5)  # (retrieval.min_relevance, a calibrator's confidence threshold)
    sweep = Sweep.of(ITEMS, result, configured).to_dict()
    assert sweep["configured"] == {"min_relevance": configured[0], "min_confidence": configured[1]}
    assert 0.3 in sweep["grid"]["min_relevance"] and 0.5 in sweep["grid"]["min_confidence"]
    assert len(sweep["points"]) == len(sweep["grid"]["min_relevance"]) * len(sweep["grid"]["min_confidence"])
    # "trap" (relevance 0.2) is gated from 0.25 up, "good" (confidence 0.3, relevance 0.6) kept below 0.35 / 0.65
    assert sweep["best"]["metrics"][PRIMARY_METRIC] == pytest.approx(3 / 4)
    assert (sweep["best"]["min_relevance"], sweep["best"]["min_confidence"]) == (0.25, 0.0)
    assert sweep["at_configured"][PRIMARY_METRIC] == pytest.approx(2 / 4)  # confidence 0.5 drops "good"
    assert sweep["open_run"]["n"] == 4 and sweep["open_run"]["metrics"]["failed"] == 1
    assert "min_relevance 0.25 and min_confidence 0.00" in Sweep.of(ITEMS, result, configured).describe()


def test_run_options_refuse_bad_values():
    from rag.errors import UsageError

    for bad in ({"limit": 0}, {"concurrency": 0}, {"timeout_s": 0}, {"pipelines": ("mine",)},
                {"sweep": True, "url": "http://x"}, {"url": "ftp://x"}):
        with pytest.raises(UsageError):
            RunOptions(**bad)
    assert not RunOptions(pipelines=("baseline",)).needs_index and RunOptions(pipelines=("baseline",)).needs_runtime
