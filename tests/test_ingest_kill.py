"""SIGKILL an ingest at several moments: the previous index stays loadable and consistent, a rerun converges."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rag.indexing.index import STORE_FILE, DocumentIndex
from tests.conftest import REPO, eval_set, ingest, make_settings

FIRST = ("1973_oil_crisis.pdf",)
LATER = ("1973_oil_crisis.pdf", "Normans.pdf", "Packet_switching.pdf", "Harvard_University.pdf")

# Run in the child: commit after every embedding batch, small batches, so a run makes several commits.
CHILD_ENV = {"RAG_INGEST__CHECKPOINT_SECONDS": "0", "RAG_INGEST__EMBED_BATCH_SIZE": "8", "RAG_INGEST__WORKERS": "1"}

# A child that dies at the worst moment: the next FAISS file renamed into place, the store not yet committed.
DIE_BEFORE_COMMIT = """
import os, signal, sys
import rag.indexing.index
rag.indexing.index.fsync = lambda path: os.kill(os.getpid(), signal.SIGKILL)
from ingest.cli import main
sys.exit(main(sys.argv[1:]))
"""


def fingerprint(index_dir: Path) -> set[tuple]:
    """What the index holds, independent of ids; also checks FAISS and the store agree and search works."""
    settings = make_settings(index_dir)
    index = DocumentIndex.open(index_dir, settings.index)
    try:
        chunks = index.store.all_chunks()
        if index.vectors is None:  # killed before the first commit: an empty index, which loads as one
            assert not chunks and index.store.count_chunks() == 0 and index.is_empty()
            return set()
        assert index.vectors.ntotal == len(chunks) == index.store.count_chunks()
        if chunks:
            ids, vectors = index.store.all_vectors(index.profile.dim)
            hits = index.search(vectors[0], 3)
            assert hits and hits[0][0] == int(ids[0])  # the index finds a stored vector's own chunk
        return {(c.document, c.position, c.page_start, c.page_end, c.text) for c in chunks}
    finally:
        index.close()


def generation(index_dir: Path) -> int:
    try:
        with sqlite3.connect(f"file:{index_dir / STORE_FILE}?mode=ro", uri=True, timeout=1) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0
    except sqlite3.Error:
        return 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, embedder):
    """docs_first/docs_later folders, a previous index of docs_first, and the uninterrupted result."""
    root = tmp_path_factory.mktemp("kill")
    squad = eval_set("squad2-dev") / "docs"
    for folder, names in (("docs_first", FIRST), ("docs_later", LATER)):
        (root / folder).mkdir()
        for name in names:
            shutil.copy(squad / name, root / folder / name)
    for target, docs in (("previous", "docs_first"), ("reference", "docs_later")):
        ingest(make_settings(root / target), root / docs, embedder)
    return root


def start_child(corpus: Path, index_dir: Path, script: str | None = None) -> subprocess.Popen:
    shutil.copytree(corpus / "previous", index_dir)
    args = ["-c", script] if script else ["-m", "ingest.cli"]
    return subprocess.Popen(
        [sys.executable, *args, str(corpus / "docs_later"), "--index", str(index_dir), "-q"],
        cwd=REPO, env={**os.environ, **CHILD_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def rerun(corpus: Path, index_dir: Path, embedder) -> None:
    assert (index_dir / STORE_FILE).exists()  # the killed run's index, not a new one
    ingest(make_settings(index_dir), corpus / "docs_later", embedder)


@pytest.mark.parametrize("kill_after_generation", [1, 2, 3])
def test_sigkill_at_a_commit_boundary(corpus, tmp_path, embedder, kill_after_generation):
    """Kill once the child has committed up to a generation (1 = before its first commit)."""
    previous, reference = fingerprint(corpus / "previous"), fingerprint(corpus / "reference")
    index_dir = tmp_path / "index"
    child = start_child(corpus, index_dir)
    deadline = time.monotonic() + 240
    while generation(index_dir) < kill_after_generation:
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "child made no progress"
        time.sleep(0.02)
    if kill_after_generation == 1:
        time.sleep(3.0)  # mid-parse or mid-embedding of the first new file, before any commit
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    after_kill = fingerprint(index_dir)  # loads, consistent, searchable
    assert previous <= after_kill <= reference  # previous content kept, nothing foreign
    rerun(corpus, index_dir, embedder)
    assert fingerprint(index_dir) == reference
    assert sorted(p.name for p in index_dir.glob("vectors-*")) == [f"vectors-{generation(index_dir)}.faiss"]


def test_sigkill_between_faiss_swap_and_commit(corpus, tmp_path, embedder):
    """The worst moment: the next FAISS file is in place but the store has not committed."""
    previous, reference = fingerprint(corpus / "previous"), fingerprint(corpus / "reference")
    index_dir = tmp_path / "index"
    child = start_child(corpus, index_dir, DIE_BEFORE_COMMIT)
    child.wait(timeout=240)
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()
    assert len(list(index_dir.glob("vectors-*.faiss"))) == 2  # the orphan next file exists beside the current

    assert fingerprint(index_dir) == previous  # the store never committed: the previous index is in force
    rerun(corpus, index_dir, embedder)
    assert fingerprint(index_dir) == reference


# A child that dies right after its first commit, before deleting the superseded FAISS file.
DIE_BEFORE_SWEEP = """
import os, signal, sys
import rag.indexing.index
rag.indexing.index.DocumentIndex._sweep = lambda self, keep: os.kill(os.getpid(), signal.SIGKILL)
from ingest.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_between_commit_and_cleanup_leaves_no_stale_file_once_opened(corpus, tmp_path):
    index_dir = tmp_path / "index"
    child = start_child(corpus, index_dir, DIE_BEFORE_SWEEP)
    child.wait(timeout=240)
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()
    assert len(list(index_dir.glob("vectors-*.faiss"))) == 2  # the committed file and the superseded one
    fingerprint(index_dir)  # opening (to read, no write) sweeps the superseded file
    assert sorted(p.name for p in index_dir.glob("vectors-*")) == [f"vectors-{generation(index_dir)}.faiss"]


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    """The pids that still run (zombies count as gone)."""
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


def kill_pool_ingest(docs: Path, index_dir: Path, env: dict[str, str], delay_s: float) -> tuple[int, set[int]]:
    """Start rag-ingest with two parse workers, SIGKILL it ``delay_s`` s after its workers exist; returns
    (its exit status, the processes it had started)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "ingest.cli", str(docs), "--index", str(index_dir), "-q", "--workers", "2"],
        cwd=REPO, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while len(descendants(child.pid)) < 2:  # the two workers (and the resource tracker) are up
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the parse workers never started"
        time.sleep(0.05)
    time.sleep(delay_s)
    started = descendants(child.pid)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    return child.returncode, started


def wait_gone(pids: set[int], timeout_s: float = 10.0) -> set[int]:
    """The pids still alive after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive(pids)


def test_parse_workers_exit_with_a_killed_ingest(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("2022 Q3 INTC.pdf", "2023 Q3 INTC.pdf"):  # over 4 MiB together: the parallel pool is used
        shutil.copy(eval_set("sec10q-dev") / "docs" / name, docs / name)
    status, started = kill_pool_ingest(docs, tmp_path / "index", {"RAG_INGEST__PAGES_PER_TASK": "16"}, 2.0)
    assert status == -signal.SIGKILL
    assert len(started) >= 2
    assert not wait_gone(started), "parse workers or the resource tracker outlived the killed ingest"


def test_missing_faiss_file_is_rebuilt_from_store(corpus, tmp_path):
    index_dir = tmp_path / "index"
    shutil.copytree(corpus / "reference", index_dir)
    expected = fingerprint(index_dir)
    for f in index_dir.glob("vectors-*.faiss"):
        f.unlink()
    assert fingerprint(index_dir) == expected
    np.testing.assert_equal(generation(index_dir), generation(corpus / "reference"))
