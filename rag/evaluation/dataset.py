"""Evaluation sets: ``<set>/docs/*.pdf`` plus ``<set>/qa.jsonl``, loaded and validated strictly.

The line format is defined in ``shared/eval/README.md``. Every validation error names the file, the 1-based
line number and the field, so a broken set is fixed at the line, not debugged at scoring time.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from rag.errors import RagError

AnswerStyle = Literal["short", "long"]

_ANSWER_STYLES: tuple[str, ...] = get_args(AnswerStyle)
_REQUIRED_FIELDS = ("id", "question", "answerable", "answers", "doc", "pages", "answer_style", "source")
_OPTIONAL_FIELDS = ("evidence",)  # known but optional; any other field is ignored
_QA_FILE = "qa.jsonl"
_DOCS_DIR = "docs"


class DatasetError(RagError):
    """An evaluation set that cannot be loaded; the message names the file, line and field to fix."""


@dataclass(frozen=True)
class QAItem:
    """One question of an evaluation set, as one line of ``qa.jsonl``."""

    id: str
    question: str
    answerable: bool
    answers: tuple[str, ...]  # empty exactly when not answerable
    doc: str  # file name in the set's docs/ folder
    pages: tuple[int, ...]  # 1-based gold pages; empty means doc-level gold only
    evidence: str | None
    answer_style: AnswerStyle
    source: str


@dataclass(frozen=True)
class EvalSet:
    """A loaded evaluation set: its documents folder and its questions in file order."""

    name: str
    root: Path
    docs_dir: Path
    items: tuple[QAItem, ...]


def load_qa(path: Path) -> list[QAItem]:
    """Read and validate a ``qa.jsonl`` file; blank lines are skipped.

    Raises ``DatasetError`` naming the file, the 1-based line number and the field for invalid JSON, a missing
    or unknown field, a wrong type, an answerable question without answers (or an unanswerable one with
    answers), a page that is not a positive int, an unknown ``answer_style``, or a duplicate id (both lines).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found; an evaluation set needs a {_QA_FILE} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot be read as UTF-8 text: {exc}") from exc

    items: list[QAItem] = []
    first_line_of: dict[str, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        item = _parse_line(line, _Where(path, line_no))
        if item.id in first_line_of:
            raise DatasetError(
                f"{path} line {line_no}: field 'id' duplicates id {item.id!r} first seen on line "
                f"{first_line_of[item.id]}; ids must be unique"
            )
        first_line_of[item.id] = line_no
        items.append(item)
    if not items:
        raise DatasetError(f"{path}: contains no questions")
    return items


def load_set(root: Path) -> EvalSet:
    """Load the evaluation set in ``root`` (``docs/*.pdf`` and ``qa.jsonl``); every ``doc`` must be in docs/."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: evaluation set folder not found")
    docs_dir = root / _DOCS_DIR
    qa_path = root / _QA_FILE
    if not docs_dir.is_dir():
        raise DatasetError(f"{root}: missing the {_DOCS_DIR}/ folder that holds the set's PDFs")
    if not any(p.is_file() for p in docs_dir.glob("*.pdf")):
        raise DatasetError(f"{docs_dir}: holds no *.pdf documents")
    if not qa_path.is_file():
        raise DatasetError(f"{root}: missing {_QA_FILE}, the set's questions")
    items = load_qa(qa_path)
    for item in items:
        if not (docs_dir / item.doc).is_file():
            raise DatasetError(
                f"{qa_path}: question {item.id!r} names doc {item.doc!r}, which is not in {docs_dir}"
            )
    return EvalSet(name=root.name, root=root, docs_dir=docs_dir, items=tuple(items))


def sample(items: Sequence[QAItem], limit: int | None, seed: int) -> list[QAItem]:
    """Pick ``limit`` items, stratified by ``answerable``, returned in their original order.

    Each stratum gets its share of ``limit`` by largest remainder (ties go to the larger stratum, then to the
    answerable one). Items within a stratum are drawn by ``random.Random(seed)``, which does not depend on
    hash randomisation, so the same items, seed and limit always give the same sample; a larger limit with
    the same seed keeps the smaller sample's items. ``limit=None`` (or a limit >= len(items)) keeps all.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")

    strata: dict[bool, list[int]] = {True: [], False: []}
    for index, item in enumerate(items):
        strata[item.answerable].append(index)
    quotas = _stratum_quotas({key: len(indices) for key, indices in strata.items()}, limit)

    rng = random.Random(seed)
    chosen: list[int] = []
    for key in (True, False):  # fixed order: the draws must not depend on dict or set iteration
        shuffled = list(strata[key])
        rng.shuffle(shuffled)
        chosen.extend(shuffled[: quotas[key]])
    return [items[index] for index in sorted(chosen)]


def _stratum_quotas(sizes: dict[bool, int], limit: int) -> dict[bool, int]:
    """Split ``limit`` over strata proportionally to ``sizes`` (Hamilton / largest remainder)."""
    total = sum(sizes.values())
    exact = {key: limit * size / total for key, size in sizes.items()}
    quotas = {key: int(share) for key, share in exact.items()}
    by_remainder = sorted(sizes, key=lambda key: (-(exact[key] - quotas[key]), -sizes[key], not key))
    for key in by_remainder[: limit - sum(quotas.values())]:
        quotas[key] += 1
    return quotas


@dataclass(frozen=True)
class _Where:
    """Where a line came from, to build error messages."""

    path: Path
    line_no: int

    def error(self, field: str, problem: str) -> DatasetError:
        return DatasetError(f"{self.path} line {self.line_no}: field {field!r} {problem}")


def _parse_line(line: str, where: _Where) -> QAItem:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        message = f"{where.path} line {where.line_no}: invalid JSON: {exc.msg} (column {exc.colno})"
        raise DatasetError(message) from None
    if not isinstance(record, dict):
        raise DatasetError(
            f"{where.path} line {where.line_no}: expected a JSON object, got {type(record).__name__}"
        )
    for field in _REQUIRED_FIELDS:
        if field not in record:
            raise where.error(field, "is missing")
    # Fields beyond the known ones are ignored: real sets carry extras (ids of the source, annotator notes).

    answerable = record["answerable"]
    if not isinstance(answerable, bool):
        raise where.error("answerable", f"must be a boolean, got {_show(answerable)}")
    answers = _string_list(record["answers"], "answers", where)
    if answerable and not answers:
        raise where.error("answers", "must hold at least one answer when 'answerable' is true")
    if not answerable and answers:
        raise where.error("answers", "must be empty when 'answerable' is false")
    answer_style = record["answer_style"]
    if answer_style not in _ANSWER_STYLES:
        raise where.error("answer_style", f"must be one of {list(_ANSWER_STYLES)}, got {_show(answer_style)}")
    evidence = record.get("evidence")
    if evidence is not None and not isinstance(evidence, str):
        raise where.error("evidence", f"must be a string or null, got {_show(evidence)}")

    return QAItem(
        id=_nonempty_string(record["id"], "id", where),
        question=_nonempty_string(record["question"], "question", where),
        answerable=answerable,
        answers=answers,
        doc=_doc_name(record["doc"], where),
        pages=_pages(record["pages"], where),
        evidence=evidence,
        answer_style=answer_style,
        source=_nonempty_string(record["source"], "source", where),
    )


def _nonempty_string(value: Any, field: str, where: _Where) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error(field, f"must be a non-empty string, got {_show(value)}")
    return value


def _string_list(value: Any, field: str, where: _Where) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise where.error(field, f"must be a list of strings, got {_show(value)}")
    for position, element in enumerate(value):
        if not isinstance(element, str) or not element.strip():
            raise where.error(field, f"element {position} must be a non-empty string, got {_show(element)}")
    return tuple(value)


def _doc_name(value: Any, where: _Where) -> str:
    name = _nonempty_string(value, "doc", where)
    if "/" in name or "\\" in name:
        raise where.error("doc", f"must be a file name in docs/, not a path, got {_show(value)}")
    return name


def _pages(value: Any, where: _Where) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise where.error("pages", f"must be a list of 1-based page numbers, got {_show(value)}")
    for position, page in enumerate(value):
        # bool is an int subclass; true/false are not page numbers
        if isinstance(page, bool) or not isinstance(page, int) or page < 1:
            problem = f"element {position} must be a positive int (pages are 1-based), got {_show(page)}"
            raise where.error("pages", problem)
    return tuple(value)


def _show(value: Any, limit: int = 60) -> str:
    """A short repr of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
