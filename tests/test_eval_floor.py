"""The CI quality gate: ours on the fixed 40-question squad2-dev sample must stay above the recorded floor."""

from __future__ import annotations

import json

import pytest

from evals import ci_sample
from tests.conftest import eval_set


@pytest.mark.e2e
def test_grounded_accuracy_stays_above_the_floor(tmp_path, capsys):
    squad = eval_set("squad2-dev")
    out = tmp_path / "report"
    code = ci_sample.main(["--squad", str(squad), "--out", str(out), "--index-root", str(tmp_path / "idx"), "-q"])
    report = json.loads((out / "report.json").read_text())
    [entry] = report["sets"]
    metrics = entry["results"]["ours"]["metrics"]
    with capsys.disabled():
        print(f"\nCI sample (squad2-dev, {metrics['n']} questions): grounded accuracy {metrics['grounded_accuracy']:.3f}, "
              f"hallucination rate {metrics['hallucination_rate']:.3f}, floor {ci_sample.CI_FLOOR}")
    assert metrics["n"] == ci_sample.CI_LIMIT and metrics["failed"] == 0
    assert code == 0, f"grounded accuracy {metrics['grounded_accuracy']:.3f} below the floor {ci_sample.CI_FLOOR}"
