"""Table rows with their headers (rag.ingestion.tables), on real pages of sec10q-dev filings and on layout lines.

Each real page below was read by eye: the figure, its row's label and the column header it sits under.
"""

from __future__ import annotations

import pypdf
import pytest

from rag.answering.evidence import split_sentences
from rag.ingestion.pdf_parsing import read_page_range
from rag.ingestion.tables import cells_of, may_hold_table, rows_with_headers
from rag.settings import IngestSettings
from tests.conftest import eval_set, squad_doc


def layout_page(document: str, page: int) -> str:
    reader = pypdf.PdfReader(eval_set("sec10q-dev") / "docs" / document)
    return reader.pages[page - 1].extract_text(extraction_mode="layout")


def line_with(text: str, *needles: str) -> str:
    found = [line for line in text.splitlines() if all(needle in line for needle in needles)]
    assert found, f"no line holds {needles}"
    return found[0]


@pytest.mark.parametrize(
    ("document", "page", "needles", "expected"),
    [
        # Headers of years beside a caption in the label column, a unit line above, a section label ("Revenue").
        ("2023 Q3 MSFT.pdf", 27, ("Intelligent Cloud", "24,259"),
         "Revenue, Intelligent Cloud: Three Months Ended September 30, 2023: 24,259; 2022: 20,325 (in millions)."),
        # Spanning headers ("Three Months Ended" over two columns) on three header lines, the unit in the prose above.
        ("2023 Q2 AMZN.pdf", 19, ("AWS", "Net sales", "22,140"),
         "AWS, Net sales: Three Months Ended June 30, 2022: $19,739; 2023: $22,140; "
         "Six Months Ended June 30, 2022: $38,180; 2023: $43,494 (in millions)."),
        # The unit in the label column of the header line, negative figures in brackets.
        ("2022 Q3 INTC.pdf", 5, ("Operating income (loss)",),
         "Operating income (loss): Three Months Ended Oct 1, 2022: (175); Sep 25, 2021: 5,227; "
         "Nine Months Ended Oct 1, 2022: 3,466; Sep 25, 2021: 14,467 (in millions)."),
    ],
)
def test_a_row_carries_its_label_headers_and_unit(document, page, needles, expected):
    rows = rows_with_headers(layout_page(document, page))
    assert rows is not None
    assert line_with(rows, *needles) == expected


def test_a_rewritten_row_is_quoted_as_one_sentence():
    rows = rows_with_headers(layout_page("2023 Q3 MSFT.pdf", 27))
    sentences = split_sentences(rows)
    row = "Revenue, Intelligent Cloud: Three Months Ended September 30, 2023: 24,259; 2022: 20,325 (in millions)."
    assert row in sentences


def test_prose_pages_are_left_alone():
    reader = pypdf.PdfReader(squad_doc("Normans.pdf"))
    plain = [page.extract_text() for page in reader.pages]
    tabular = [i for i, text in enumerate(plain) if may_hold_table(text)]
    for i in tabular:  # a page that looked tabular to the cheap test still has no table block
        assert rows_with_headers(reader.pages[i].extract_text(extraction_mode="layout")) is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Net sales            $       74,430      $    82,546", ["Net sales", "$74,430", "$82,546"]),
        ("Gross margin          45.2   %      43.0 %", ["Gross margin", "45.2%", "43.0 %"]),
        ("Other                     —          (12)", ["Other", "—", "(12)"]),
    ],
)
def test_cells_join_currency_and_percent_signs(line, expected):
    assert [cell.text for cell in cells_of(line)] == expected


@pytest.mark.parametrize(
    "text",
    [
        # Prose that ends in figures, a single space before them: a sentence, not a row.
        "Revenue grew by 12 percent in 2023\nand operating income by 4 percent in 2022",
        # One row alone is not a table.
        "Header                     2023       2022\nNet sales             1,234      1,100\nSee notes.",
    ],
)
def test_text_without_a_table_block_is_not_rewritten(text):
    assert rows_with_headers(text) is None


def test_ingest_reads_table_rows_when_asked_and_plain_text_by_default():
    path = eval_set("sec10q-dev") / "docs" / "2023 Q3 MSFT.pdf"
    rows = read_page_range(path, IngestSettings(ocr="off", tables="rows"), start=26, stop=27).texts[0]
    plain = read_page_range(path, IngestSettings(ocr="off"), start=26, stop=27).texts[0]
    assert "Intelligent Cloud: Three Months Ended September 30, 2023: 24,259; 2022: 20,325 (in millions)." in rows
    assert "Intelligent Cloud 24,259 20,325" in plain
    assert "Three Months Ended September 30, 2023: 24,259" not in plain


def test_the_ingest_report_counts_pages_with_table_rows(tmp_path, embedder):
    """Two real pages: a filing's segment table (rows rewritten) and an article's prose (left alone)."""
    from pypdf import PdfReader, PdfWriter

    from tests.conftest import ingest, make_settings

    docs = tmp_path / "docs"
    docs.mkdir()
    for source, page, name in [(eval_set("sec10q-dev") / "docs" / "2023 Q3 MSFT.pdf", 26, "msft.pdf"),
                               (squad_doc("Normans.pdf"), 0, "normans.pdf")]:
        writer = PdfWriter()
        writer.add_page(PdfReader(source).pages[page])
        writer.write(docs / name)
    report = ingest(make_settings(tmp_path / "index", ingest__tables="rows"), docs, embedder)
    assert (report.pages, report.table_pages) == (2, 1)
