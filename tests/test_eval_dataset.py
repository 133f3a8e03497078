"""Loading and sampling of evaluation sets (rag.evaluation.dataset)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rag.errors import RagError
from rag.evaluation.dataset import DatasetError, EvalSet, QAItem, load_qa, load_set, sample

SHARED_EVAL = Path(__file__).parents[1].parent / "shared" / "eval"


def _record(qid: str = "q1", **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": qid,
        "question": "What continent are the Canarian Islands off the coast of?",
        "answerable": True,
        "answers": ["Africa"],
        "doc": "Normans.pdf",
        "pages": [6],
        "evidence": "... off the Atlantic coast of Africa.",
        "answer_style": "short",
        "source": "squad2-dev",
    }
    record.update(overrides)
    return record


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _item(qid: str, answerable: bool) -> QAItem:
    return QAItem(
        id=qid,
        question="?",
        answerable=answerable,
        answers=("x",) if answerable else (),
        doc="A.pdf",
        pages=(1,),
        evidence=None,
        answer_style="short",
        source="test",
    )


def test_valid_file_parses(tmp_path: Path) -> None:
    unanswerable = _record("q2", answerable=False, answers=[], evidence=None, pages=[], answer_style="long")
    without_evidence = _record("q3")
    del without_evidence["evidence"]
    path = _write(tmp_path / "qa.jsonl", [json.dumps(_record()), "", "   ", json.dumps(unanswerable),
                                          json.dumps(without_evidence)])
    items = load_qa(path)
    assert [item.id for item in items] == ["q1", "q2", "q3"]
    first = items[0]
    assert first == QAItem(
        id="q1",
        question="What continent are the Canarian Islands off the coast of?",
        answerable=True,
        answers=("Africa",),
        doc="Normans.pdf",
        pages=(6,),
        evidence="... off the Atlantic coast of Africa.",
        answer_style="short",
        source="squad2-dev",
    )
    assert items[1].answerable is False and items[1].answers == () and items[1].pages == ()
    assert items[2].evidence is None


@pytest.mark.parametrize(
    ("bad_line", "field", "fragment"),
    [
        (json.dumps(_record("q3", answerable="yes")), "answerable", "must be a boolean, got 'yes'"),
        (json.dumps({k: v for k, v in _record("q3").items() if k != "question"}), "question", "missing"),
        (json.dumps(_record("q3", pages=[0])), "pages", "positive int"),
        (json.dumps(_record("q3", pages=[2, True])), "pages", "positive int"),
        (json.dumps(_record("q3", pages="6")), "pages", "list"),
        (json.dumps(_record("q3", answers=[])), "answers", "at least one answer"),
        (json.dumps(_record("q3", answerable=False)), "answers", "must be empty"),
        (json.dumps(_record("q3", answers="Africa")), "answers", "list of strings"),
        (json.dumps(_record("q3", answer_style="medium")), "answer_style", "'medium'"),
        (json.dumps(_record("q3", id=7)), "id", "non-empty string"),
        (json.dumps(_record("q3", doc="sub/Normans.pdf")), "doc", "file name"),
        (json.dumps(_record("q3", evidence=3)), "evidence", "string or null"),
    ],
)
def test_malformed_line_names_line_and_field(tmp_path: Path, bad_line: str, field: str, fragment: str) -> None:
    # the bad record is on line 4: a blank line still counts in the numbering
    path = _write(tmp_path / "qa.jsonl", [json.dumps(_record("q1")), "", json.dumps(_record("q2")), bad_line])
    with pytest.raises(DatasetError) as caught:
        load_qa(path)
    message = str(caught.value)
    assert f"qa.jsonl line 4: field '{field}'" in message
    assert fragment in message


def test_unknown_extra_fields_are_ignored(tmp_path: Path) -> None:
    # Real sets carry extra fields (a source's own ids, annotator notes); known fields are still checked.
    extra = {**_record("q1"), "annotator": "a7", "squad_id": "56ddde6b9a695914005b9628"}
    items = load_qa(_write(tmp_path / "qa.jsonl", [json.dumps(extra)]))
    assert [item.id for item in items] == ["q1"] and items[0].answers == ("Africa",)
    mistyped = {**_record("q2", answers="Africa"), "note": "x"}
    with pytest.raises(DatasetError, match="field 'answers'"):
        load_qa(_write(tmp_path / "bad.jsonl", [json.dumps(mistyped)]))


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "qa.jsonl", [json.dumps(_record("q1")), '{"id": "q2", "question": '])
    with pytest.raises(DatasetError, match=r"qa\.jsonl line 2: invalid JSON"):
        load_qa(path)


def test_non_object_line_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "qa.jsonl", ["[1, 2]"])
    with pytest.raises(DatasetError, match=r"line 1: expected a JSON object"):
        load_qa(path)


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "qa.jsonl", [json.dumps(_record("q1")), json.dumps(_record("q2")),
                                          json.dumps(_record("q1"))])
    with pytest.raises(DatasetError) as caught:
        load_qa(path)
    message = str(caught.value)
    assert "line 3: field 'id'" in message and "line 1" in message and "'q1'" in message


def test_dataset_error_is_a_rag_error(tmp_path: Path) -> None:
    assert issubclass(DatasetError, RagError)
    with pytest.raises(RagError, match="not found"):
        load_qa(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="no questions"):
        load_qa(_write(tmp_path / "qa.jsonl", [""]))


def test_load_set_needs_docs_and_qa(tmp_path: Path) -> None:
    root = tmp_path / "tiny"
    root.mkdir()
    with pytest.raises(DatasetError, match="docs/"):
        load_set(root)
    (root / "docs").mkdir()
    with pytest.raises(DatasetError, match=r"no \*\.pdf"):
        load_set(root)
    (root / "docs" / "Normans.pdf").write_bytes(b"%PDF-1.4\n")
    with pytest.raises(DatasetError, match="qa.jsonl"):
        load_set(root)
    _write(root / "qa.jsonl", [json.dumps(_record("q1")), json.dumps(_record("q2", doc="Other.pdf"))])
    with pytest.raises(DatasetError, match="'Other.pdf'"):
        load_set(root)
    _write(root / "qa.jsonl", [json.dumps(_record("q1"))])
    loaded = load_set(root)
    expected_items = tuple(load_qa(root / "qa.jsonl"))
    assert loaded == EvalSet(name="tiny", root=root, docs_dir=root / "docs", items=expected_items)


@pytest.mark.parametrize(
    ("name", "total", "answerable", "unanswerable"),
    [("squad2-dev", 360, 180, 180), ("clapnq-dev", 300, 151, 149), ("sec10q-dev", 130, 130, 0)],
)
def test_real_sets_load_with_readme_counts(name: str, total: int, answerable: int, unanswerable: int) -> None:
    root = SHARED_EVAL / name
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    eval_set = load_set(root)
    counts = Counter(item.answerable for item in eval_set.items)
    assert len(eval_set.items) == total
    assert (counts[True], counts[False]) == (answerable, unanswerable)
    assert eval_set.name == name


def test_sample_is_stable_stratified_and_ordered() -> None:
    # 30 answerable, 10 unanswerable, interleaved
    items = [_item(f"q{i:02d}", answerable=i % 4 != 0) for i in range(40)]
    picked = sample(items, limit=8, seed=13)
    assert picked == sample(items, limit=8, seed=13)
    assert Counter(item.answerable for item in picked) == {True: 6, False: 2}  # 8 * 3/4 and 8 * 1/4
    positions = [items.index(item) for item in picked]
    assert positions == sorted(positions)
    assert len({item.id for item in picked}) == 8
    # a different seed draws different items, with the same proportions
    other = sample(items, limit=8, seed=14)
    assert other != picked
    assert Counter(item.answerable for item in other) == {True: 6, False: 2}
    # largest remainder: 10 * 3/4 = 7.5 and 2.5 -> the larger stratum takes the tie
    assert Counter(item.answerable for item in sample(items, limit=10, seed=0)) == {True: 8, False: 2}
    # a larger limit with the same seed keeps the smaller sample
    assert set(picked) <= set(sample(items, limit=20, seed=13))


def test_sample_limits() -> None:
    items = [_item(f"q{i}", answerable=i % 2 == 0) for i in range(5)]
    assert sample(items, limit=None, seed=0) == items
    assert sample(items, limit=50, seed=0) == items
    assert len(sample(items, limit=1, seed=0)) == 1
    with pytest.raises(ValueError, match="limit"):
        sample(items, limit=0, seed=0)


def test_sample_does_not_depend_on_hash_seed() -> None:
    # the same draw in two interpreters with different PYTHONHASHSEED
    code = (
        "from rag.evaluation.dataset import QAItem, sample\n"
        "items = [QAItem(id=f'q{i}', question='?', answerable=i % 3 != 0, answers=('x',) if i % 3 else (),"
        " doc='A.pdf', pages=(1,), evidence=None, answer_style='short', source='t') for i in range(60)]\n"
        "print([item.id for item in sample(items, limit=12, seed=5)])\n"
    )
    repo = Path(__file__).parents[1]
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(repo)}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outputs.add(done.stdout)
    assert len(outputs) == 1
