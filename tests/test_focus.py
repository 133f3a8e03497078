"""Which documents a question names (rag.answering.focus), on the real cover pages of the sec10q-dev filings, and
the retriever's focus ranking on a real index of four of them."""

from __future__ import annotations

from datetime import date

import pypdf
import pytest
from pypdf import PdfReader, PdfWriter

from rag.answering.focus import DocumentFocus, asks_latest, latest_date
from rag.answering.retrieval import HybridRetriever
from rag.ingestion.pdf_parsing import ARRAY_LIMIT
from tests.conftest import eval_set, ingest, make_settings

PAGES = 8
FILINGS = ["2022 Q3 NVDA.pdf", "2023 Q2 AMZN.pdf", "2023 Q3 AMZN.pdf", "2023 Q2 INTC.pdf", "2023 Q3 INTC.pdf",
           "2023 Q1 AAPL.pdf", "2023 Q3 NVDA.pdf", "2023 Q2 MSFT.pdf"]


@pytest.fixture(scope="module")
def covers() -> dict[str, str]:
    docs = eval_set("sec10q-dev") / "docs"
    with pypdf.apply_configuration(array_maximum_element_count=ARRAY_LIMIT):  # as ingestion reads them
        return {name: PdfReader(docs / name).pages[0].extract_text() for name in FILINGS}


def test_the_company_named_in_words_points_at_its_filing_and_the_period_picks_one(covers) -> None:
    focus = DocumentFocus(covers)
    # "Amazon" is on the cover ("AMAZON.COM, INC."), not in the file name; "Q2 2023" is in the file name.
    assert focus.resolve("In Amazon's Q2 2023 10-Q, what were net sales?") == ("2023 Q2 AMZN.pdf",)
    assert focus.resolve("What did NVIDIA report as gaming revenue in its Q3 2023 10-Q?") == ("2023 Q3 NVDA.pdf",)
    assert focus.resolve("What did Microsoft report as cloud revenue?") == ("2023 Q2 MSFT.pdf",)
    # The quarter in words picks the period as the code does.
    assert focus.resolve("What were Intel's revenues in the third quarter of 2023?") == ("2023 Q3 INTC.pdf",)
    # Every Intel filing matches "Intel" alike: the question points at both.
    assert set(focus.resolve("What was Intel's gross margin?")) == {"2023 Q2 INTC.pdf", "2023 Q3 INTC.pdf"}


def test_latest_picks_the_newest_filing_by_its_cover_date(covers) -> None:
    focus = DocumentFocus(covers)
    assert focus.resolve("What was Intel's gross margin in the latest 10-Q?") == ("2023 Q3 INTC.pdf",)
    assert focus.resolve("Amazon's most recent quarterly net sales?") == ("2023 Q3 AMZN.pdf",)
    # the cover's latest date: "outstanding as of July 21, 2023", after "period ended June 30, 2023"
    assert latest_date(covers["2023 Q2 AMZN.pdf"]) == date(2023, 7, 21)
    assert asks_latest("in the most recent 10-Q") and not asks_latest("in the Q2 2023 10-Q")


def test_questions_naming_nothing_distinctive_point_at_nothing(covers) -> None:
    focus = DocumentFocus(covers)
    assert focus.resolve("What is the risk of foreign exchange rates?") == ()  # words every cover shares or none has
    assert focus.resolve("Who was the duke of Normandy?") == ()
    # A file-name word alone is not the name: "found" does not name "I Still Haven't Found What I'm Looking For".
    articles = DocumentFocus({"I_Still_Haven_t_Found_What_I_m_Looking_For.pdf": "", "Nimbostratus_cloud.pdf": "",
                              "Myelin.pdf": "", "Normans.pdf": ""})
    assert articles.resolve("where are nimbostratus clouds found in the sky") == ("Nimbostratus_cloud.pdf",)
    assert articles.resolve("where are nimbus clouds found in the sky") == ()


def _filings_index(folder, embedder):
    """Settings of a real index of the first PAGES pages (for speed) of three sec10q-dev filings."""
    docs = folder / "docs"
    docs.mkdir()
    for name in ("2023 Q2 AMZN.pdf", "2023 Q2 INTC.pdf", "2023 Q2 MSFT.pdf"):
        with pypdf.apply_configuration(array_maximum_element_count=ARRAY_LIMIT):
            reader, writer = PdfReader(eval_set("sec10q-dev") / "docs" / name), PdfWriter()
            for page in reader.pages[:PAGES]:
                writer.add_page(page)
            writer.write(docs / name)
    settings = make_settings(folder / "index")
    ingest(settings, docs, embedder)
    return settings


@pytest.mark.models
def test_focus_brings_the_named_filing_into_the_top_passages(tmp_path, embedder) -> None:
    settings = _filings_index(tmp_path, embedder)
    from rag.indexing.index import DocumentIndex

    index = DocumentIndex.open(settings.index.path, settings.index)
    # The words favour Intel's filing ("foundry"); the question names Amazon's.
    question = "In Amazon's 10-Q, what was said about foundry services?"
    try:
        with_focus = HybridRetriever(index, embedder, settings.retrieval).load().retrieve(question, 5)
        plain = settings.retrieval.model_copy(update={"focus": False})
        without = HybridRetriever(index, embedder, plain).load().retrieve(question, 5)
    finally:
        index.close()
    amazon = lambda passages: sum(p.chunk.document == "2023 Q2 AMZN.pdf" for p in passages)  # noqa: E731
    assert amazon(with_focus) >= 4
    assert amazon(without) <= 2


@pytest.mark.models
def test_table_ranking_brings_a_named_filings_tables_into_the_top_passages(tmp_path, embedder) -> None:
    """retrieval.table_ranking: for a question about a report, the named filing's table passages ranked by BM25 join
    the fusion (Intel's gross margin sits in its income statement, page 6, not in the prose of page 5)."""
    from rag.answering.retrieval import is_tabular
    from rag.indexing.index import DocumentIndex

    settings = _filings_index(tmp_path, embedder)
    index = DocumentIndex.open(settings.index.path, settings.index)
    on = settings.retrieval.model_copy(update={"table_ranking": True})
    report = "What was Intel's gross margin in its Q2 2023 10-Q?"
    article = "What is a foundry?"  # no report asked about: the same passages either way
    try:
        with_tables = HybridRetriever(index, embedder, on).load()
        without = HybridRetriever(index, embedder, settings.retrieval).load()
        tables_on = sum(is_tabular(p.chunk.text) for p in with_tables.retrieve(report, 5))
        tables_off = sum(is_tabular(p.chunk.text) for p in without.retrieve(report, 5))
        ids = lambda retriever: [p.chunk.id for p in retriever.retrieve(article, 5)]  # noqa: E731
        same = ids(with_tables) == ids(without)
    finally:
        index.close()
    assert tables_on >= 3 and tables_on > tables_off  # measured 4 against 1
    assert same


def test_a_passage_is_tabular_when_most_lines_end_in_a_figure() -> None:
    from rag.answering.retrieval import is_tabular

    statement = "Net sales $ 134,383\nOperating expenses 126,702\nOperating income 7,681\nSee notes."
    assert is_tabular(statement)
    assert not is_tabular("Net sales grew 11% to $134.4 billion.\nOperating income was $7.7 billion in the quarter.")


class _RecordingBatcher:
    """Keeps the prompt and declines: the test is about what the service quotes, not what a model makes of it."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def admit(self, max_new_tokens: int, timeout_s: float | None = None) -> None:
        return None  # admits everything, reserving nothing

    async def stream(self, prompt, max_new_tokens, timeout_s=None, admission=None):
        from rag.generation.base import GenerationResult

        self.prompts.append(prompt)
        yield GenerationResult("Answer: NOT IN DOCUMENTS", len(prompt), 4, "stop")


@pytest.mark.models
def test_a_question_about_a_report_is_quoted_from_the_filing_it_names(tmp_path, runtime) -> None:
    """The service (real retrieval, focus, evidence and prompt over real filings): a question naming Microsoft's
    10-Q is quoted from Microsoft's filing only, though an Intel page on foundries and wafers is among the
    passages; the same words without a report named are quoted from whatever matches them."""
    import asyncio
    import re

    from rag.answering.service import AnswerService

    settings = _filings_index(tmp_path, runtime.embedder)
    derived = runtime.derive({"index": {"path": settings.index.path}})
    batcher = _RecordingBatcher()
    service = AnswerService(derived.retriever, derived.llm, batcher, derived.settings, calibrator=None)
    quoted = lambda prompt: set(re.findall(r"^\[\d+\] \((.+?), p\. \d+\)", prompt, re.MULTILINE))  # noqa: E731
    try:
        asyncio.run(service.answer("In Microsoft's Q2 2023 10-Q, what was said about foundry services and wafers?"))
        asyncio.run(service.answer("What was said about foundry services and wafers at Microsoft?"))
    finally:
        derived.close()
    report, plain = batcher.prompts
    assert quoted(report) == {"2023 Q2 MSFT.pdf"}
    assert "2023 Q2 INTC.pdf" in quoted(plain)


def test_bench_retrieval_parses_variants_and_refuses_unknown_settings(tmp_path, capsys) -> None:
    from bench.retrieval import main, parse_variant

    assert parse_variant("focus=false,top_k=8,mode=dense") == {"focus": False, "top_k": 8, "mode": "dense"}
    assert main(["--set", str(eval_set("sec10q-dev")), "--index", str(tmp_path), "--variant", "focs=false"]) == 2
    assert "unknown retrieval settings: ['focs']" in capsys.readouterr().err
    assert main(["--set", str(tmp_path / "missing"), "--index", str(tmp_path)]) == 2


def test_bench_retrieval_evidence_counts_the_span_in_passages_and_quotes(tmp_path, small_index, capsys) -> None:
    """Real squad2-dev questions on the small index (Normans, Steam engine): the reference span is found in the
    passages at least as often as in the quotes cut from them, and a one-sentence budget quotes less."""
    import json

    from bench.retrieval import main

    lines = [json.loads(x) for x in (eval_set("squad2-dev") / "qa.jsonl").read_text().splitlines() if x.strip()]
    picked = [x for x in lines if x["answerable"] and x["doc"] in ("Normans.pdf", "Steam_engine.pdf")][:12]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(x) + "\n" for x in picked))
    (tmp_path / "docs").symlink_to(eval_set("squad2-dev") / "docs")
    assert main(["--set", str(tmp_path), "--index", str(small_index.index.path), "--evidence",
                 "--variant", "evidence_sentences=1,evidence_tokens=32"]) == 0
    shown = [line for line in capsys.readouterr().out.splitlines() if "reference span" in line]
    figures = [[float(w) for w in line.replace(",", "").split() if w.replace(".", "").isdigit() and "." in w]
               for line in shown]
    assert len(figures) == 2  # defaults, then the variant
    (passages, quotes), (_, quotes_one) = figures
    assert passages >= quotes >= quotes_one and passages > 0.5
