"""The rag-eval command: argument and set errors with their exit codes, the floor check, the CI sample, and
an e2e run in process, with real models, on a 4-question set built from squad2-dev."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rag.errors import ExitCode
from rag.evaluation.dataset import load_set, sample
from tests.conftest import eval_set
from tests.test_eval_runner import METRIC_KEYS, _hand_report


def test_cli_reports_a_malformed_line_with_its_number(tmp_path, capsys):
    from evals.cli import main

    root = tmp_path / "broken-set"
    (root / "docs").mkdir(parents=True)
    shutil.copy(eval_set("squad2-dev") / "docs" / "Normans.pdf", root / "docs" / "Normans.pdf")
    good = json.dumps({
        "id": "q1", "question": "Who?", "answerable": False, "answers": [], "doc": "Normans.pdf", "pages": [],
        "answer_style": "short", "source": "test",
    })
    (root / "qa.jsonl").write_text(good + "\n" + '{"id": "q2", "question": \n')
    code = main(["--set", str(root), "--index-root", str(tmp_path / "idx"), "--out", str(tmp_path / "out")])
    assert code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "line 2" in err and "qa.jsonl" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "idx").exists()  # failed before any work


def test_cli_refuses_bad_arguments(tmp_path, capsys):
    from evals.cli import main

    root = str(eval_set("squad2-dev"))
    assert main(["--set", root, "--limit", "0"]) == ExitCode.USAGE
    assert main(["--set", root, "--sweep", "--url", "http://127.0.0.1:1"]) == ExitCode.USAGE
    assert main(["--set", root, "--pipeline", "baseline", "--min-grounded-accuracy", "0.5"]) == ExitCode.USAGE
    assert "--min-grounded-accuracy checks ours" in capsys.readouterr().err
    assert main(["--set", root, "--max-new-tokens", "100000"]) == ExitCode.USAGE  # refused by the settings
    assert "max_new_tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse's own usage errors exit 2 too
        main(["--pipeline", "ours"])
    assert exc.value.code == ExitCode.USAGE


def test_floor_check_exits_1_below_the_floor(capsys):
    from evals.cli import floor_check

    report = _hand_report()  # ours scores 0.5 on "handmade"
    assert floor_check(report, None) == ExitCode.OK
    assert floor_check(report, 0.5) == ExitCode.OK
    assert floor_check(report, 0.6) == ExitCode.PARTIAL == 1
    assert "handmade: ours' grounded accuracy 0.500 is below the floor 0.600" in capsys.readouterr().err


def test_ci_sample_is_balanced_and_fixed():
    from evals.ci_sample import CI_LIMIT, CI_SEED, ci_argv

    items = sample(load_set(eval_set("squad2-dev")).items, CI_LIMIT, CI_SEED)
    assert len(items) == 40 and sum(i.answerable for i in items) == 20
    assert [i.id for i in items] == [i.id for i in sample(load_set(eval_set("squad2-dev")).items, 40, 0)]
    argv = ci_argv(Path("x"))
    assert argv[argv.index("--limit") + 1] == "40" and "--min-grounded-accuracy" in argv


# ------------------------------------------------------------------------------------------------- e2e


def _tiny_set(root: Path) -> Path:
    """docs/Normans.pdf and 4 squad2-dev questions on it: the first 2 answerable and the first 2 not."""
    squad = eval_set("squad2-dev")
    (root / "docs").mkdir(parents=True)
    shutil.copy(squad / "docs" / "Normans.pdf", root / "docs" / "Normans.pdf")
    lines = [json.loads(line) for line in (squad / "qa.jsonl").read_text().splitlines() if line.strip()]
    normans = [d for d in lines if d["doc"] == "Normans.pdf"]
    chosen = [d for d in normans if d["answerable"]][:2] + [d for d in normans if not d["answerable"]][:2]
    (root / "qa.jsonl").write_text("".join(json.dumps(d) + "\n" for d in chosen))
    return root


@pytest.mark.e2e
def test_rag_eval_end_to_end_on_a_tiny_set(tmp_path, capsys):
    from evals.cli import main

    root = _tiny_set(tmp_path / "tiny")
    out = tmp_path / "report"
    argv = [
        "--set", str(root), "--pipeline", "both", "--index-root", str(tmp_path / "idx"),
        "--out", str(out), "--max-new-tokens", "32", "--min-grounded-accuracy", "0", "-q",
    ]
    assert main(argv) == ExitCode.OK
    captured = capsys.readouterr()
    assert "grounded_accuracy" in captured.out

    for name in ("report.json", "report.md", "metrics-tiny.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert report["machine"]["cpu_count"] and report["settings"]["generation"]["max_new_tokens"] == 32
    assert report["command"].startswith("rag-eval --set")
    entry = report["sets"][0]
    assert entry["name"] == "tiny" and entry["sample"] == {
        "n": 4, "answerable": 2, "unanswerable": 2, "limit": None, "seed": 0
    }
    assert entry["ingest"]["new"] == 1
    for pipeline in ("ours", "baseline"):
        result = entry["results"][pipeline]
        assert set(result["metrics"]) == METRIC_KEYS and result["n"] == 4 and result["metrics"]["n"] == 4
        assert len(result["records"]) == 4
        assert all(r["error"] is None for r in result["records"]), result["records"]
        assert all(r["retrieved"] for r in result["records"])
        assert result["metrics"]["recall@10"] > 0  # the gold page of an answerable question was retrieved
    baseline_records = entry["results"]["baseline"]["records"]
    # an abstention's passages are its nearest ones, never its citations
    assert all(c["document"] == "Normans.pdf" for r in baseline_records for c in r["citations"] + r["nearest"])
    assert all(len(r["citations" if not r["abstained"] else "nearest"]) == 4 for r in baseline_records)
    assert all(r["citations"] == [] for r in baseline_records if r["abstained"])
    assert entry["sweep"] is None  # the sweep step is covered on fakes above: it would cost a third run here
    assert (tmp_path / "idx" / "tiny" / "index").is_dir() and (tmp_path / "idx" / "tiny" / "baseline-faiss").is_dir()
    assert "| metric | ours | baseline |" in (out / "report.md").read_text()
