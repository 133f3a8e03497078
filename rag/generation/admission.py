"""How long the generator will take for the work it has: the estimate behind admission control
(``rag.generation.batching``), measured on recent work so that it follows what the machine delivers now.

Every finished batch is timed in two parts: its prefill (from its start to the first decode step of any row) and
its decode (from there to its end). They give two rates, seconds per prompt token and seconds per generated
token, each a moving average over recent batches. A job is then estimated at

    prefill rate x its prompt tokens + decode rate x the tokens it is expected to generate,

the expected tokens being the recent average of finished jobs with the same token budget (the service's budgets
stand for its answer forms: a short span, one to three sentences), or the budget itself while none has finished.
A batch costs the sum of its rows: on a CPU the cost is about linear in rows (and the CTranslate2 backend runs
one row at a time); on a GPU this overestimates, erring toward refusing.

A shared machine can slow down at any moment (another job starts beside the server). While a batch runs, the
work it has done so far (prompt tokens, decode steps) is compared with what the rates say it should have taken;
when it is slower, every estimate is scaled up by that factor until the batch ends and its measurement moves the
rates: a machine that became busy is seen within a second of decoding, not a batch later.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

# Weight of the newest batch in the moving averages of the two rates: high, because a rate changes when the
# machine's load does and should be followed within two or three answers; a quiet machine's per-token times
# vary little from answer to answer, so the average needs little smoothing.
RATE_WEIGHT = 0.5
# Weight of the newest finished job in the average completion length of its budget: lower, because answer
# lengths vary from question to question and only their mean matters for a queue of many.
LENGTH_WEIGHT = 0.2
# The live slowdown of a running batch is only trusted after this long: the first step of an answer carries
# the scheduling noise of a thread waking up, and the step in progress (tens of ms) is not counted as done.
LIVE_MIN_SECONDS = 0.5
# Prompt characters per token until a prompt has been measured (English text in Qwen's tokenizer: about 4).
INITIAL_CHARS_PER_TOKEN = 4.0


@dataclass
class RowProgress:
    """One row of a running batch, as the worker sees it: its size, and the decode steps it has taken."""

    prompt_tokens: float  # estimated from the prompt's characters: the exact count comes with the result
    budget: int
    steps: int = 0


@dataclass
class RunningBatch:
    """The batch the worker is generating; the rows' stop checks (asked once per decode step) update it."""

    started: float  # time.monotonic()
    rows: list[RowProgress]
    first_step: float | None = None  # when the first decode step of any row came back: the prefill's end

    def step(self, row: int) -> None:
        """Called from the worker thread at each decode step of ``row``."""
        if self.first_step is None:
            self.first_step = time.monotonic()
        self.rows[row].steps += 1


@dataclass(frozen=True)
class FinishedRow:
    """What a finished row tells the model: its real size, and whether it ran to its own end."""

    prompt_tokens: int
    completion_tokens: int
    budget: int
    prompt_chars: int
    cut_short: bool = False  # stopped because its caller was gone: says nothing about answer lengths


@dataclass
class CostModel:
    """Seconds a job, a batch or a call will take, from the recent work measured with ``record_batch`` and
    ``record_call``. Until a batch that decoded has been measured, every job is ``initial_job_seconds``.

    Not thread-safe on its own: the batcher calls it under its lock (``RunningBatch.step`` aside, whose plain
    counter updates a reader may see one step late)."""

    initial_job_seconds: float
    prefill_seconds_per_token: float | None = None
    decode_seconds_per_token: float | None = None
    call_seconds: float | None = None
    chars_per_token: float | None = None  # measured; INITIAL_CHARS_PER_TOKEN until then
    prompt_tokens_mean: float | None = None  # for a job whose prompt is not written yet (a reservation)
    completion_by_budget: dict[int, float] = field(default_factory=dict)
    batches_measured: int = 0

    def __post_init__(self) -> None:
        if not self.initial_job_seconds > 0:
            raise ValueError(f"initial_job_seconds must be > 0, got {self.initial_job_seconds!r}")

    @property
    def measured(self) -> bool:
        """Whether both rates have been measured (a batch that decoded nothing measures only the prefill)."""
        return self.prefill_seconds_per_token is not None and self.decode_seconds_per_token is not None

    # ------------------------------------------------------------------ estimates

    def prompt_tokens(self, prompt: str | None) -> float:
        """Tokens of ``prompt`` from its length in characters; the recent mean for a prompt not written yet."""
        if prompt is None:
            return self.prompt_tokens_mean if self.prompt_tokens_mean is not None else 0.0
        return len(prompt) / (self.chars_per_token or INITIAL_CHARS_PER_TOKEN)

    def expected_completion(self, budget: int) -> float:
        """Tokens a job with this budget is expected to generate: the recent mean, or the budget until known."""
        return min(float(budget), self.completion_by_budget.get(budget, float(budget)))

    def job_seconds(self, prompt_tokens: float, budget: int, slowdown: float = 1.0) -> float:
        """Seconds one job will take on its own."""
        if not self.measured:
            return self.initial_job_seconds * slowdown
        assert self.prefill_seconds_per_token is not None and self.decode_seconds_per_token is not None
        return slowdown * (
            self.prefill_seconds_per_token * prompt_tokens
            + self.decode_seconds_per_token * self.expected_completion(budget)
        )

    def call_job_seconds(self, slowdown: float = 1.0) -> float:
        """Seconds a call job (``yes_probability``: prefills, no decoding) will take."""
        return slowdown * (self.call_seconds if self.call_seconds is not None else self.initial_job_seconds)

    def slowdown(self, batch: RunningBatch | None, now: float) -> float:
        """How much slower than the rates the running batch goes (at least 1): its elapsed time against what the
        rates give for the work it has done (its prefill, and the decode steps taken)."""
        if batch is None or now - batch.started < LIVE_MIN_SECONDS:
            return 1.0
        if not self.measured:  # only the initial guess to go by: slower once the batch has run longer than it
            return max(1.0, (now - batch.started) / (self.initial_job_seconds * len(batch.rows)))
        assert self.prefill_seconds_per_token is not None and self.decode_seconds_per_token is not None
        done = self.prefill_seconds_per_token * sum(r.prompt_tokens for r in batch.rows)
        done += self.decode_seconds_per_token * sum(r.steps for r in batch.rows)
        return max(1.0, (now - batch.started) / done) if done > 0 else 1.0

    def remaining_seconds(self, batch: RunningBatch | None, now: float, slowdown: float = 1.0) -> float:
        """Seconds left of the running batch: its rows' estimates (a row already longer than its budget's mean is
        expected to take one more step at least) less the time it has run."""
        if batch is None:
            return 0.0
        if not self.measured:
            total = self.initial_job_seconds * len(batch.rows)
        else:
            assert self.prefill_seconds_per_token is not None and self.decode_seconds_per_token is not None
            total = sum(
                self.prefill_seconds_per_token * row.prompt_tokens
                + self.decode_seconds_per_token * _row_tokens(row, self.expected_completion(row.budget))
                for row in batch.rows
            )
        return max(0.0, slowdown * total - (now - batch.started))

    # ------------------------------------------------------------------ measurements

    def record_batch(self, rows: Sequence[FinishedRow], started: float, first_step: float | None, ended: float) -> None:
        """Move the rates (and the expected lengths) toward a finished batch's measurement."""
        if not rows:
            return
        prompt_tokens = sum(r.prompt_tokens for r in rows)
        generated = sum(r.completion_tokens for r in rows)
        prefill_end = first_step if first_step is not None else ended  # no step at all: it was all prefill
        if prompt_tokens > 0:
            self.prefill_seconds_per_token = _moved(
                self.prefill_seconds_per_token, (prefill_end - started) / prompt_tokens, RATE_WEIGHT
            )
            chars = sum(r.prompt_chars for r in rows)
            self.chars_per_token = _moved(self.chars_per_token, chars / prompt_tokens, RATE_WEIGHT)
            self.prompt_tokens_mean = _moved(self.prompt_tokens_mean, prompt_tokens / len(rows), LENGTH_WEIGHT)
        if generated > 0:
            self.decode_seconds_per_token = _moved(
                self.decode_seconds_per_token, (ended - prefill_end) / generated, RATE_WEIGHT
            )
        for row in rows:
            if not row.cut_short:
                previous = self.completion_by_budget.get(row.budget)
                self.completion_by_budget[row.budget] = _moved(previous, row.completion_tokens, LENGTH_WEIGHT)
        self.batches_measured += 1

    def record_call(self, seconds: float) -> None:
        self.call_seconds = _moved(self.call_seconds, seconds, RATE_WEIGHT)


def _row_tokens(row: RowProgress, expected: float) -> float:
    """Tokens a running row is expected to generate in all: its budget's mean, or one more than it has when it is
    already past that; never more than its budget."""
    return min(float(row.budget), max(expected, row.steps + 1.0))


def _moved(average: float | None, value: float, weight: float) -> float:
    """``average`` moved toward ``value`` by ``weight`` (``value`` itself when there is no average yet)."""
    if not math.isfinite(value):
        return average if average is not None else 0.0
    return value if average is None else average + weight * (value - average)
