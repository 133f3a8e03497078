"""The slow checks of issue 24 (``-m slow``), against a real server over the small index.

- Admission control on a busy machine: a CPU hog spinning on every core beside the server (``bench.cpu_hog``:
  what an evaluation running beside it does), and a burst of questions at once. Every request is answered 200 or
  refused 503 with Retry-After; none is admitted and then timed out (504); the question after the burst is
  answered in its normal time. The hog starts once the burst has been admitted at the rate measured on the quiet
  machine (docs/benchmarks.md has bursts on a machine busy from the start). The request time limit is 30 s
  instead of 120 s, so that the burst overloads the generator and drains in about half a minute; what is tested
  (the estimate follows the rate the busy machine delivers) does not depend on it. The hog makes this a CPU-heavy
  job: on the team's shared machine run it under ``flock /work/cpu.lock``.
- Schemathesis with non-finite numbers (``tests/schemathesis_nonfinite.py``: NaN, the infinities and 1e999 written
  into JSON bodies): no 5xx, no connection reset, every answer as documented.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
import threading
import time

import httpx
import pytest

from api.app import create_app
from bench.cpu_hog import CpuHog, usable_cores
from tests.conftest import REPO
from tests.test_api_hardening import served
from tests.test_campaign_slow import run_schemathesis

pytestmark = pytest.mark.slow

TIMEOUT_S = 30.0
BURST = 32
# Two spinning processes per core: a heavy neighbour (the campaign's evaluations ran the load average to 12-14 on
# these 2 cores), which slows answers down about three to four times, more than the admission margin covers.
HOG_PROCESSES = 2 * usable_cores()
PROBE = "What religion were the Normans?"
QUESTIONS = (  # answerable squad2-dev questions about the two articles of the small index
    "What continent are the Canarian Islands off the coast of?",
    "How long did Western Europe control Cyprus?",
    "What river was Petrela located by?",
    "What architecture type came after Norman in England?",
    "When were the French wars of religion?",
    "What century did the Normans first gain their separate identity?",
    "In what part of the 19th century were steam turbines introduced?",
    "What type of steam engines produced most power up to the early 20th century?",
    "Along with mills and mines, in what industrial locations did steam drive machines?",
    "What ideal thermodynamic cycle analyzes the process by which steam engines work?",
    "What company developed the most successful steam engine indicator?",
    "Who was Margaret's brother?",
)


async def _ask(http: httpx.AsyncClient, question: str) -> dict:
    started = time.monotonic()
    try:
        response = await http.post("/v1/query", json={"question": question})
    except httpx.TransportError as exc:  # a reset or a client timeout is an outcome, and a failure
        return {"status": f"{type(exc).__name__}", "seconds": time.monotonic() - started}
    outcome = {"status": response.status_code, "seconds": time.monotonic() - started,
               "retry_after": response.headers.get("retry-after")}
    if response.status_code == 200:
        outcome["generate_s"] = response.json()["timings"].get("generate_s", 0.0)
    return outcome


async def _alone(port: int, question: str) -> dict:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT_S + 60) as http:
        return await _ask(http, question)


async def _burst(port: int) -> tuple[list[dict], dict]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT_S + 60,
                                 limits=httpx.Limits(max_connections=BURST + 1)) as http:
        outcomes = await asyncio.gather(*(_ask(http, QUESTIONS[i % len(QUESTIONS)]) for i in range(BURST)))
        after = await _ask(http, PROBE)
    return outcomes, after


class _HogAfterFirstAnswer(threading.Thread):
    """Starts the CPU hog once the burst's first answer has been generated while admitted requests still wait (at
    most 120 s on), and keeps it running until ``stop()``: the machine slows down after the burst has been admitted
    at the quiet rate. Every request of the burst asks for admission on arrival, before its retrieval (a
    reservation, not yet a waiting job), so by the first answer every decision is made; a trigger on the number of
    waiting jobs never fired where fewer than that were admitted (the 1.5B admitted 11 of 32)."""

    def __init__(self, batcher):
        super().__init__(daemon=True)
        self.batcher = batcher
        self.measured_before = batcher.costs.batches_measured
        self.hog = CpuHog(HOG_PROCESSES)
        self.ran = 0  # processes the hog ran with, 0 if it never started
        self._done = threading.Event()

    def _queued(self) -> bool:
        return self.batcher.waiting + self.batcher.reserved > 0

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while not self._done.is_set() and time.monotonic() < deadline:
            if self.batcher.costs.batches_measured > self.measured_before and self._queued():
                break
            time.sleep(0.02)
        else:
            return
        with self.hog:
            self.ran = self.hog.processes
            self._done.wait()

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=30)


def test_a_burst_admitted_before_a_cpu_hog_starts_gets_only_answers_and_503s(runtime):
    """The hard case: the rates were measured on the quiet machine, the burst is admitted at them, and then the
    hog starts (after the burst's first answer, with admitted requests still waiting), so the rate the machine
    delivers falls after the decisions. Before issue 24 the admitted requests the machine could no longer finish waited into 504s; now they
    are refused 503 at the next answer, and nothing admitted misses its limit."""
    # Its own batcher (another queue_size), so the estimate starts unmeasured, as in a fresh server.
    rt = runtime.derive({"generation": {"request_timeout_s": TIMEOUT_S, "queue_size": 48}})
    assert rt.batcher is not runtime.batcher
    try:
        with served(create_app(rt.settings, runtime=rt)) as port:
            for _ in range(2):  # the rates measured on the quiet machine
                quiet = asyncio.run(_alone(port, PROBE))
                assert quiet["status"] == 200, quiet
            hog = _HogAfterFirstAnswer(rt.batcher)
            hog.start()
            try:
                outcomes, after = asyncio.run(_burst(port))
                baseline = asyncio.run(_alone(port, PROBE))  # the probe's normal time beside the hog, queue empty
            finally:
                hog.stop()
    finally:
        rt.close()
    hog_ran = hog.ran
    statuses = [o["status"] for o in outcomes]
    counts = dict(sorted(Counter(map(str, statuses)).items()))
    summary = (f"hog {hog_ran} processes; probe alone {quiet['seconds']:.1f} s quiet, "
               f"{baseline['seconds']:.1f} s beside the hog; burst {counts}; "
               f"probe after it {after['status']} in {after['seconds']:.1f} s; "
               f"refused after admission {rt.batcher.refused_late}")
    print("\n" + summary)  # the figures, shown with -s
    assert hog_ran, "the hog never started: nothing admitted was left waiting after the first answer"
    assert set(statuses) <= {200, 503}, summary  # no 504, no reset, no client timeout
    assert 200 in statuses and 503 in statuses, summary  # the burst did overload the generator
    for outcome in outcomes:
        if outcome["status"] == 503:
            assert outcome["retry_after"] and int(outcome["retry_after"]) >= 1, outcome
        else:
            assert outcome["generate_s"] <= TIMEOUT_S, outcome  # the part the limit bounds
    assert after["status"] == 200 and baseline["status"] == 200, summary
    assert after["seconds"] < 2 * baseline["seconds"], summary  # the queue has drained: its normal time


NONFINITE_EXAMPLES = int(os.environ.get("RAG_NONFINITE_EXAMPLES", "100"))  # per operation
NONFINITE_SEED = os.environ.get("RAG_CAMPAIGN_SEED", "11")
NONFINITE_CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_schemathesis_with_non_finite_numbers_finds_no_server_error(runtime, tmp_path):
    """Every operation, every JSON body with a value made NaN, an infinity or 1e999 (the hooks). The checks are
    the ones that hold for any request, valid or not: no 5xx (a connection reset fails the run too), and status,
    content type and body as the OpenAPI document says. (The acceptance checks of tests/test_campaign_slow.py
    would count a schema-valid body with a NaN written into it as valid data refused.) Generation capped at 4
    tokens, as in the campaign, so that accepted questions (a 1e999 in an ignored place) answer in seconds."""
    pytest.importorskip("schemathesis", reason="pip install -e '.[campaign]'")
    from tests.schemathesis_nonfinite import LOG_ENV, TOKENS  # imports schemathesis: only where it is installed
    log = tmp_path / "nonfinite.log"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_nonfinite", LOG_ENV: str(log),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = run_schemathesis(runtime, tmp_path, [
        "--checks", NONFINITE_CHECKS, "--phases", "examples,fuzzing", "--max-examples", str(NONFINITE_EXAMPLES),
        "--seed", NONFINITE_SEED,
    ], env=env)
    sent = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    print(f"\nnon-finite bodies generated: {len(sent)}; " + run.stdout.strip().splitlines()[-1] if run.stdout else "")
    assert run.returncode == 0, f"see {tmp_path / 'schemathesis.txt'}\n" + run.stdout[-6000:] + run.stderr[-2000:]
    assert len(sent) >= NONFINITE_EXAMPLES, len(sent)  # the hooks did fire: about this many per JSON operation
    for token in TOKENS:
        assert any(token in line for line in sent), (token, len(sent))
    assert any('"question"' in line for line in sent) and any('"messages"' in line for line in sent)
