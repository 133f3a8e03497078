"""The long parts of the fault-and-abuse campaign (``-m slow``): schemathesis over the OpenAPI document with a
bounded number of examples, and SIGKILLs of a pooled ingest at random moments, commits included.
Bursts of concurrent questions are a benchmark: ``python -m bench.burst`` (docs/benchmarks.md)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from api.app import create_app
from rag.indexing.index import DocumentIndex
from tests.conftest import REPO, eval_set, ingest, make_settings
from tests.test_api_hardening import served
from tests.test_ingest_kill import alive, descendants, fingerprint, generation, wait_gone

pytestmark = pytest.mark.slow

SCHEMATHESIS_EXAMPLES = int(os.environ.get("RAG_CAMPAIGN_EXAMPLES", "25"))  # per operation
SCHEMATHESIS_SEED = os.environ.get("RAG_CAMPAIGN_SEED", "11")
KILLS = int(os.environ.get("RAG_CAMPAIGN_KILLS", "20"))
COMMIT_WAIT_S = 300.0  # longest wait for a commit before a kill meant to land after one


def chunk_count(index_dir: Path) -> int:
    index = DocumentIndex.open(index_dir, make_settings(index_dir).index)
    try:
        return index.store.count_chunks()
    finally:
        index.close()


def test_schemathesis_finds_no_server_error_and_no_conformance_failure(runtime, tmp_path):
    """Every check schemathesis has (positive and negative data), a bounded number of examples per operation.
    Generation is capped at 4 tokens so that the accepted questions answer in seconds on a CPU."""
    pytest.importorskip("schemathesis", reason="pip install -e '.[campaign]'")
    run = run_schemathesis(runtime, tmp_path, [
        "--checks", "all", "--max-examples", str(SCHEMATHESIS_EXAMPLES), "--seed", SCHEMATHESIS_SEED,
    ])
    assert run.returncode == 0, f"see {tmp_path / 'schemathesis.txt'}\n" + run.stdout[-6000:] + run.stderr[-2000:]


def run_schemathesis(runtime, tmp_path: Path, args: list[str], env: dict[str, str] | None = None):
    """schemathesis's CLI (``args`` after ``run URL``) against a real server over a copy of the session's index
    (uploads land in the copy), generation capped at 4 tokens so that accepted questions answer in seconds on a
    CPU; its output also kept in ``tmp_path/schemathesis.txt``. The completed process."""
    index_dir = tmp_path / "index"
    shutil.copytree(runtime.settings.index.path, index_dir)
    rt = runtime.derive({
        "index": {"path": index_dir},
        "generation": {"max_new_tokens": 4, "max_new_tokens_short": 4, "max_new_tokens_limit": 4},
    })
    try:
        with served(create_app(rt.settings, runtime=rt)) as port:
            run = subprocess.run(
                [sys.executable, "-m", "schemathesis.cli", "--config-file", str(REPO / "schemathesis.toml"),
                 "run", f"http://127.0.0.1:{port}/openapi.json", *args,
                 "--request-timeout", "180", "--workers", "1", "--suppress-health-check", "all"],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3000,
            )
    finally:
        rt.close()  # its own index and batcher only
    (tmp_path / "schemathesis.txt").write_text(run.stdout + run.stderr, encoding="utf-8")
    return run


def kill_corpus(docs: Path) -> None:
    """Two large filings (over 4 MiB with the rest: the parallel pool is used) and many small articles.

    With the child's checkpoint after every embedding group of at least 8 chunks (RAG_INGEST__EMBED_BATCH_SIZE=2),
    the small articles make dozens of commits, so a campaign of KILLS kills ends before the interrupted ingest does
    (each rerun resumes from the last commit; with only six small articles one run stopped at 11 kills)."""
    docs.mkdir()
    shutil.copy(eval_set("sec10q-dev") / "docs" / "2023 Q1 AAPL.pdf", docs / "aapl.pdf")
    shutil.copy(eval_set("sec10q-dev") / "docs" / "2022 Q3 INTC.pdf", docs / "intc.pdf")
    for folder in (eval_set("squad2-dev") / "docs", eval_set("clapnq-dev") / "docs"):
        for pdf in sorted(folder.glob("*.pdf")):
            shutil.copy(pdf, docs / pdf.name)


def test_random_kills_of_a_pooled_ingest_lose_nothing_and_leave_no_process(tmp_path, embedder):
    """KILLS SIGKILLs of one interrupted ingest at random moments (start-up, parsing, embedding, and every other
    kill 0-1 s after a commit: checkpoint every group), each followed by a check that the index loads, holds no
    foreign or duplicate chunk, and that no worker or resource tracker outlives the ingest; a final rerun
    converges on the uninterrupted result. Fails unless all KILLS kills land before the ingest finishes."""
    docs = tmp_path / "docs"
    kill_corpus(docs)
    started = time.monotonic()
    ingest(make_settings(tmp_path / "reference"), docs, embedder)
    reference = fingerprint(tmp_path / "reference")
    reference_s = time.monotonic() - started

    env = {"RAG_INGEST__CHECKPOINT_SECONDS": "0", "RAG_INGEST__EMBED_BATCH_SIZE": "2",
           "RAG_INGEST__PAGES_PER_TASK": "16", "RAG_INGEST__WORKERS": "2"}
    index_dir = tmp_path / "index"
    rng = random.Random(7)
    orphans, after_commit, kills, loads, finished_early = [], 0, 0, 0, None
    started = time.monotonic()
    for kill in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, "-m", "ingest.cli", str(docs), "--index", str(index_dir), "-q"],
            cwd=REPO, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        start_generation = generation(index_dir)
        seen: set[int] = set()
        if kill % 2:
            # Every other kill lands just after a commit, whatever the machine's speed: on a busy CPU the first
            # commit of a run can come later than any fixed delay (all 20 kills then land before one).
            deadline = time.monotonic() + COMMIT_WAIT_S
            while time.monotonic() < deadline and child.poll() is None and generation(index_dir) == start_generation:
                seen |= descendants(child.pid)
                time.sleep(0.05)
            deadline = time.monotonic() + rng.uniform(0.0, 1.0)
        else:
            # Short enough that a run rarely gets far (start-up alone takes seconds): the campaign must not
            # finish the ingest before its last kill.
            deadline = time.monotonic() + rng.uniform(0.5, 10.0)
        while time.monotonic() < deadline and child.poll() is None:
            seen |= descendants(child.pid)
            time.sleep(0.05)
        if child.poll() is not None:
            assert child.returncode in (0, 1), child.stderr.read().decode()
            finished_early = kill
            break  # the ingest finished before this kill: reported, and failed below
        seen |= descendants(child.pid)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        kills += 1
        after_commit += generation(index_dir) > start_generation
        orphans += sorted(wait_gone(seen))
        if (index_dir / "store.sqlite").exists():
            held = fingerprint(index_dir)  # loads, FAISS agrees with the store, search works
            assert held <= reference, f"kill {kill}: chunks that the uninterrupted ingest does not have"
            assert chunk_count(index_dir) == len(held), f"kill {kill}: duplicated chunks"
            loads += 1
    campaign_s = time.monotonic() - started
    held_before_rerun = chunk_count(index_dir) if (index_dir / "store.sqlite").exists() else 0
    assert not orphans, f"processes outlived their killed ingest: {orphans}"
    assert after_commit >= 1, "no kill landed after a commit"
    ingest(make_settings(index_dir), docs, embedder)
    final = fingerprint(index_dir)
    # The figures docs/benchmarks.md reports (shown with -s).
    print(f"\nkill campaign: {kills} kills ({after_commit} after a commit), index loaded {loads} times, "
          f"{len(reference - final)} lost, {chunk_count(index_dir) - len(final)} duplicated, "
          f"{len(final - reference)} foreign, {len(orphans)} orphans; {len(reference)} chunks in "
          f"{len(list(docs.glob('*.pdf')))} files, {held_before_rerun} committed when the kills ended; "
          f"reference ingest {reference_s:.0f} s, kills {campaign_s:.0f} s")
    assert final == reference and chunk_count(index_dir) == len(reference)  # 0 lost, 0 duplicated
    assert not alive(orphans)
    assert kills == KILLS, f"the interrupted ingest finished before kill {finished_early}: {kills} of {KILLS} kills"
