"""Table rows that carry their column headers: "Intelligent Cloud: Three Months Ended September 30, 2023: 24,259; ...".

pypdf's plain extraction keeps a financial table's rows on their lines but loses which column a value sits in:
"Intelligent Cloud 24,259 20,325", with "2023 2022" and "(In millions)" some lines above, often in another chunk.
A reader (or a 1.5B generator) then cannot tell the quarter from the year before. pypdf's layout mode places
text at its x position, so the columns line up: each value is matched to the header cells above its column
(nearest by centre, the way a person reads a spanning "Three Months Ended" over two year columns), and each row is
rewritten as one line, ending with a full stop so that the evidence step quotes it as one sentence:

    Intelligent Cloud: Three Months Ended September 30, 2023: 24,259; Three Months Ended September 30, 2022: 20,325
    (in millions).

pypdf's layout mode over pdfplumber, by measurement (docs/evaluation.md, "Tables"): pdfplumber's table finder found
the filings' tables but not their header rows, and put figures in the wrong columns, at twice the time. Only pages
whose plain text looks tabular are read a second time, and a page without a table block keeps its plain text, so
prose documents cost nothing and read exactly as before. Used with ``ingest.tables`` "rows"; the default is "off":
on sec10q-dev the rows cost 1.8x the parse time and 41% more chunks, and did not answer more questions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rag.text import ends_in_figure

# A value cell: an amount, a percentage, a count, or a dash standing for nil. "$" and "%" may stand apart.
_VALUE = re.compile(r"^\$?\s*\(?\s*[-−]?\$?\s*\d[\d,]*(\.\d+)?\s*\)?\s*%?$|^[—–-]{1,3}$")
_YEAR = re.compile(r"^(19|20)\d\d$")
_CELL_GAP = re.compile(r"\S+(?: \S+)*")  # cells are separated by two spaces or more
# The unit of a table's amounts: "(In millions, except per share amounts)", "(dollars in thousands)". Only its base
# ("in millions") is written on each row, and not on rows of shares, per-share figures or percentages: Apple's
# "(In millions, except number of shares which are reflected in thousands and per share amounts)" on every row
# would be longer than most rows.
_UNIT = re.compile(r"\b(?:dollars |amounts |\$ )?in (millions|thousands|billions)\b", re.IGNORECASE)
_NOT_IN_UNIT = re.compile(r"\bshares?\b|%|\bratio\b|\bpercent", re.IGNORECASE)

MIN_ROWS = 2  # a block of fewer rows is a sentence that ends in a number, not a table
LABEL_GAP = 3  # spaces between a row's label and its first value (prose has single spaces)
MAX_HEADER_LINES = 4
MAX_HEADER_CELL = 48  # a longer cell over the columns is prose above the table, not a header
MAX_SECTION_LABEL = 80  # "Weighted average shares of common stock outstanding:" heads the rows below it
MAX_BLANK_RUN = 4  # blank lines tolerated inside a table and between it and its headers


@dataclass(frozen=True)
class Cell:
    start: int
    end: int  # exclusive
    text: str

    @property
    def centre(self) -> float:
        return (self.start + self.end) / 2


@dataclass(frozen=True)
class Row:
    line: int
    label: str
    values: tuple[Cell, ...]


def may_hold_table(plain_text: str) -> bool:
    """Whether a page's plain text has at least ``MIN_ROWS`` lines ending in a figure (worth a layout pass)."""
    return sum(1 for line in plain_text.splitlines() if ends_in_figure(line)) >= MIN_ROWS


def cells_of(line: str) -> list[Cell]:
    """The cells of a layout line, "$" and "%" joined to the figure they belong to."""
    raw = [Cell(m.start(), m.end(), m.group()) for m in _CELL_GAP.finditer(line)]
    cells: list[Cell] = []
    for cell in raw:
        if cells and cells[-1].text in {"$", "($", "$("} and _VALUE.match(cell.text):
            previous = cells.pop()
            cell = Cell(previous.start, cell.end, previous.text + cell.text)
        elif cells and cell.text in {"%", ")", "%)"} and _VALUE.match(cells[-1].text.strip("$")):
            previous = cells.pop()
            cell = Cell(previous.start, cell.end, previous.text + cell.text)
        cells.append(cell)
    return cells


def _is_value(cell: Cell) -> bool:
    return bool(_VALUE.match(cell.text))


def _row_of(index: int, line: str) -> Row | None:
    """The line as a table row (a label, then values only), or None."""
    cells = cells_of(line)
    values: list[Cell] = []
    while cells and _is_value(cells[-1]):
        values.insert(0, cells.pop())
    if not values or len(cells) > 1:
        return None  # no figure, or text between the figures
    if all(_YEAR.match(v.text) for v in values):
        return None  # a header of years ("Three Months Ended September 30,   2023   2022")
    if not cells:
        return Row(index, "", tuple(values))
    label = cells[0]
    if values[0].start - label.end < LABEL_GAP or len(label.text) > 120:
        return None  # prose that ends in a number
    if sum(ch.isalpha() for ch in label.text) == 0:
        return None
    return Row(index, label.text, tuple(values))


def _blocks(lines: list[str]) -> list[list[Row]]:
    """Runs of rows, allowing blank lines and short section labels between them."""
    blocks: list[list[Row]] = []
    current: list[Row] = []
    gap = 0
    for index, line in enumerate(lines):
        row = _row_of(index, line)
        if row is not None:
            current.append(row)
            gap = 0
            continue
        stripped = line.strip()
        if not stripped:
            gap += 1
            if gap <= MAX_BLANK_RUN:
                continue
        elif len(cells_of(line)) == 1 and len(stripped) <= MAX_SECTION_LABEL and current:
            gap = 0
            continue  # a section label ("North America", "Revenue") inside the table
        if len(current) >= MIN_ROWS:
            blocks.append(current)
        current, gap = [], 0
    if len(current) >= MIN_ROWS:
        blocks.append(current)
    return blocks


def _columns(block: list[Row]) -> list[tuple[float, float]]:
    """The block's value columns as (start, end), left to right, from the right edges of its values."""
    ends = sorted({v.end for row in block for v in row.values})
    groups: list[list[int]] = []
    for end in ends:
        if groups and end - groups[-1][-1] <= 3:
            groups[-1].append(end)
        else:
            groups.append([end])
    columns = []
    for group in groups:
        members = [v for row in block for v in row.values if group[0] <= v.end <= group[-1]]
        columns.append((min(v.start for v in members), max(v.end for v in members)))
    return columns


def _unit_in(text: str) -> str:
    """The base unit ``text`` states ("in millions"), or ""."""
    found = _UNIT.search(text)
    return f"in {found.group(1).lower()}" if found else ""


def _column_of(cell: Cell, columns: list[tuple[float, float]]) -> int:
    return min(range(len(columns)), key=lambda i: abs(columns[i][1] - cell.end))


def _headers(lines: list[str], first: int, columns: list[tuple[float, float]]) -> tuple[list[list[str]], str, str]:
    """The header text of each column, the unit, and the section label just above the first row ("Revenue").

    Walks up from the block's first row over blank lines and section labels to at most ``MAX_HEADER_LINES``
    header lines (short cells), stopping at prose."""
    values_from = min(start for start, _ in columns) - 2
    spacing = (columns[-1][1] - columns[0][1]) / max(len(columns) - 1, 1) if len(columns) > 1 else 20.0
    header_lines: list[list[Cell]] = []
    unit = section = ""
    index, blanks = first - 1, 0
    while index >= 0 and len(header_lines) < MAX_HEADER_LINES:
        line = lines[index]
        if not line.strip():
            blanks += 1
            if blanks > MAX_BLANK_RUN:
                break
            index -= 1
            continue
        cells = cells_of(line)
        prose = any(len(c.text) > MAX_HEADER_CELL and c.end > values_from for c in cells)
        if prose or _row_of(index, line) is not None:
            unit = unit or _unit_in(line)
            break
        if all(c.centre < values_from for c in cells):  # a section label or a unit line at the left
            stated = _unit_in(line)
            unit = unit or stated
            if not stated and not header_lines and not section:
                section = " ".join(line.split()).rstrip(":")
            index -= 1
            continue
        header_lines.insert(0, cells)
        blanks = 0
        index -= 1
    headers: list[list[str]] = []  # per column, its header cells top to bottom
    for start, end in columns:
        centre = (start + end) / 2
        parts: list[str] = []
        for cells in header_lines:
            parts += [c.text for c in cells if c.centre < values_from and not _UNIT.search(c.text)]
            over = [c for c in cells if c.centre >= values_from]
            if not over:
                continue
            nearest = min(over, key=lambda c: abs(c.centre - centre))
            distance = max(nearest.start - end, start - nearest.end, 0)
            if distance <= spacing:
                parts.append(nearest.text)
        headers.append(parts)
    for cells in header_lines:
        for cell in cells:
            unit = unit or _unit_in(cell.text)
    return headers, unit, section


def _row_text(label: str, row: Row, columns: list[tuple[float, float]], headers: list[list[str]], unit: str) -> str:
    """One row as a line: its label, each value after its column's header, its unit, a full stop.

    A header shared by consecutive values ("Three Months Ended") is written once, before the first of them:
    "Three Months Ended Oct 1, 2022: $15,338; Sep 25, 2021: $19,192; Nine Months Ended Oct 1, 2022: ...".
    """
    values = []
    shared: list[str] = []
    for value in row.values:
        parts = headers[_column_of(value, columns)]
        figure = re.sub(r"\s+", "", value.text)
        own = parts[-1:] if parts[:-1] and parts[:-1] == shared else parts
        shared = parts[:-1]
        values.append(f"{' '.join(own)}: {figure}" if own else figure)
    # Per-share figures, share counts and percentages are not in the table's unit ("except per share amounts").
    in_unit = not _NOT_IN_UNIT.search(label) and not any("%" in v.text for v in row.values)
    tail = f" ({unit})" if unit and in_unit else ""
    head = f"{label}: " if label else ""
    return f"{head}{'; '.join(values)}{tail}."


def rows_with_headers(layout_text: str) -> str | None:
    """The page's layout text with every table row rewritten to carry its column headers and unit; None when
    the page has no table (the caller keeps the plain text)."""
    lines = layout_text.splitlines()
    blocks = _blocks(lines)
    if not blocks:
        return None
    rewritten = {}
    for block in blocks:
        columns = _columns(block)
        headers, unit, section = _headers(lines, block[0].line, columns)
        previous = block[0].line
        for row in block:
            for between in lines[previous + 1:row.line]:  # empty for the first row
                if between.strip():
                    section = " ".join(between.split()).rstrip(":")
            label = " ".join(row.label.split())
            if section and label:
                label = f"{section}, {label}"
            elif section:
                label = section
            rewritten[row.line] = _row_text(label, row, columns, headers, unit)
            previous = row.line
    return "\n".join(rewritten.get(i, " ".join(line.split())) for i, line in enumerate(lines))
