"""Smoke tests of the benchmark scripts: each ``--quick`` mode runs in a subprocess, exits 0 and prints and
writes its figures. No speed is asserted: these are not timed tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rag.ingestion.ocr import INSTALL_HINT, tesseract_version
from tests.conftest import REPO, SMALL_CORPUS, eval_set

pytestmark = pytest.mark.slow

MACHINE_LINES = ("date:", "command:", "cpu:", "software:", "gpu:")


def run_bench(module: str, args: list[str], out: Path, timeout_s: float) -> tuple[str, dict]:
    """Run ``python -m bench.<module> ARGS --json OUT``; its stdout and the figures it wrote."""
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args, "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    for line in MACHINE_LINES:
        assert line in proc.stdout, f"machine line {line!r} missing"
    return proc.stdout, json.loads(out.read_text())


@pytest.fixture
def two_docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in SMALL_CORPUS:
        shutil.copy(eval_set("squad2-dev") / "docs" / name, folder / name)
    return folder


def test_ingest_quick(tmp_path, two_docs):
    stdout, figures = run_bench("ingest", ["--docs", str(two_docs), "--quick", "1"], tmp_path / "ingest.json", 900)
    for key in ("ours end to end", "embed", "index", "ours rerun, unchanged", "baseline end to end",
                "ratio ours/baseline", "parse-only ceiling"):
        assert key in stdout
    corpus = figures["corpora"][0]
    assert corpus["files"] == 1
    assert {"ours", "baseline", "ceiling", "ratio_ours_over_baseline"} <= corpus.keys()
    assert corpus["ours"]["pages"] > 0 and corpus["ours"]["rerun_unchanged"] == 1
    assert {"parse_chunk", "embed", "index"} <= corpus["ours"]["stage_seconds"].keys()
    assert {"parse", "chunk", "embed", "index"} <= corpus["baseline"]["stage_seconds"].keys()
    assert corpus["ceiling"]["pages"] == corpus["baseline"]["pages"]


def test_ingest_rejects_a_folder_without_pdfs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "--docs", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 2 and "no PDF files" in proc.stderr


def test_search_quick(tmp_path):
    from rag.indexing.vector_index import gpu_count

    stdout, figures = run_bench("search", ["--quick"], tmp_path / "search.json", 300)
    cpu_rows = [r for r in figures["rows"] if r["device"] == "cpu"]
    assert sorted(r["kind"] for r in cpu_rows) == ["flat", "hnsw", "ivf"]
    for row in cpu_rows:
        assert {"build_s", "qps_batch1", "p50_ms_batch1", "qps_batched", "recall_at_10"} <= row.keys()
    assert next(r for r in cpu_rows if r["kind"] == "flat")["recall_at_10"] == 1.0
    if gpu_count() == 0:
        assert "skipped: no GPU" in stdout


def test_serve_quick(tmp_path, two_docs):
    stdout, figures = run_bench(
        "serve", ["--docs", str(two_docs), "--quick", "--questions", str(eval_set("squad2-dev") / "qa.jsonl")],
        tmp_path / "serve.json", 900,
    )
    assert "ours/naive requests/s" in stdout
    for name in ("ours", "naive"):
        levels = figures["servers"][name]
        assert [level["concurrency"] for level in levels] == [1, 2]
        for level in levels:
            assert {"requests_per_s", "latency_s", "ttft_s", "output_tokens_per_s", "errors"} <= level.keys()
            assert level["ok"] == level["requests"] == 2
    assert len(figures["ratios"]) == 2


def test_fetch_manuals_script_parses():
    assert subprocess.run(["bash", "-n", str(REPO / "bench" / "fetch_manuals.sh")]).returncode == 0


def test_embed_engines_quick(tmp_path, two_docs):
    """The embedder under CTranslate2 int8 beside the service's, on a real index of two squad2-dev articles."""
    index = tmp_path / "index"
    proc = subprocess.run([sys.executable, "-m", "ingest.cli", str(two_docs), "--index", str(index)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    stdout, figures = run_bench(
        "embed_engines", ["--set", str(eval_set("squad2-dev")), "--index", str(index), "--engines", "ct2-int8",
                          "--speed-passages", "32", "--repeats", "1"], tmp_path / "engines.json", 900)
    rows = {row["engine"]: row for row in figures["rows"]}
    assert set(rows) == {"st-fp32", "ct2-int8"}
    assert rows["ct2-int8"]["cosine_mean"] > 0.98  # int8 weights, the same model
    assert 0.0 < rows["st-fp32"]["sets"]["squad2-dev"]["recall@5"] <= 1.0


def test_embed_engines_needs_an_index_per_set(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.embed_engines", "--set", str(eval_set("squad2-dev")), "--index", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "store.sqlite" in proc.stderr


@pytest.mark.skipif(tesseract_version() is None, reason=f"Tesseract is not installed ({INSTALL_HINT})")
def test_ocr_bench_reads_a_filing_page_and_a_blank_page(tmp_path) -> None:
    # 2023 Q2 MSFT.pdf's page tree passes pypdf's default array limit (the bench once died on it); the last page
    # of Harvard_University.pdf has (almost) nothing for OCR to find, which the bench records instead of dying on.
    msft = eval_set("sec10q-dev") / "docs" / "2023 Q2 MSFT.pdf"
    harvard = eval_set("squad2-dev") / "docs" / "Harvard_University.pdf"
    stdout, figures = run_bench("ocr", ["--page", f"{msft}:5", "--page", f"{harvard}:8"], tmp_path / "ocr.json",
                                timeout_s=300)
    assert "pages/s" in stdout and figures["tesseract"] and len(figures["rows"]) == 2
    assert figures["rows"][0]["cer"] < 0.1 and figures["rows"][0]["ocr_pages"] == 1
