"""evals.compare_runs: two configurations, or ours against the LangChain baseline, paired question by question.

Records are written as rag-eval writes them (partial/<set>.<pipeline>.jsonl), with the features the service
records; no model is needed to compare them."""

from __future__ import annotations

import json

import numpy as np

from evals.compare_runs import main, recorded_right


def _write(folder, set_name, pipeline, records) -> None:
    partial = folder / "partial"
    partial.mkdir(parents=True, exist_ok=True)
    (partial / f"{set_name}.{pipeline}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _ours(set_name, n, seed):
    """Gates-open records whose groundedness follows relevance, as real ones roughly do."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        relevance = float(rng.uniform(0.2, 0.8))
        grounded = bool(rng.uniform() < relevance)
        rows.append({
            "id": f"{set_name}-{i}", "question": "What is the figure?", "answerable": True, "abstained": False,
            "answer": "It is stated.", "score": {"grounded": grounded}, "form": "long", "quotes": [],
            "citations": [], "features": {"relevance": relevance, "long_form": 1.0},
        })
    return rows


def test_ours_against_the_baseline_pairs_the_questions_both_answered(tmp_path, capsys) -> None:
    ours = [tmp_path / "ours-a", tmp_path / "ours-b"]
    _write(ours[0], "seta", "ours", _ours("seta", 60, 0))
    _write(ours[1], "setb", "ours", _ours("setb", 60, 1))
    baseline = tmp_path / "baseline"
    # The baseline answered 20 of seta's questions: 5 grounded, 10 not, and declined 5 answerable ones.
    records = [{"id": f"seta-{i}", "answerable": True, "abstained": i >= 15, "score": {"grounded": i < 5}}
               for i in range(20)] + [{"id": "seta-99", "answerable": True, "abstained": False, "error": "timeout"}]
    _write(baseline, "seta", "baseline", records)

    right = recorded_right([baseline])
    assert len(right) == 20 and sum(r[0] for r in right.values()) == 5  # the failed question is left out

    assert main(["--a", *map(str, ours), "--baseline", str(baseline), "--sets-root", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("| seta |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "20"  # only the questions both sides have
    assert float(cells[3]) == 0.25  # the baseline's own outcome: 5 of 20
