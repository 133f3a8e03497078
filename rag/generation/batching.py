"""Dynamic batching: many concurrent requests, one worker thread owning the model.

Callers (asyncio handlers, or plain threads through ``submit_sync``) put jobs into a bounded waiting list and
get a future back. The worker takes the oldest job, waits up to ``batch_wait_ms`` (counted from that job's
arrival) for up to ``max_batch_size`` jobs, and runs them as ONE ``generate_batch`` call.

Admission control: a job is refused at once with ``Overloaded`` (the API's 503 + Retry-After) when the waiting
list is full, or when the work ahead of it (what is left of the running batch, then every job waiting) would
not let it start before its deadline. The estimate comes from measured batches: seconds per row of a batch
(generation on a CPU costs about linearly in rows; on a GPU this overestimates, erring toward refusing), raised
live while a batch runs longer than expected. A job whose caller gave up (deadline passed, client gone, task
cancelled) leaves the waiting list, and its row of a running batch stops at the next decode step; a batch
whose rows have all stopped ends there, so the worker is free again for the next question.

Futures are ``concurrent.futures.Future``: the worker resolves them from its thread, and
``asyncio.wrap_future`` hands the result to the caller's event loop through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from rag.errors import RagError
from rag.generation.base import GenerationResult, Generator, TokenCallback
from rag.settings import GenerationSettings

log = logging.getLogger(__name__)

_EWMA_WEIGHT = 0.3  # weight of the newest batch in the running estimate of seconds per batch row
# Seconds per row of a batch until one has been measured: a guess between a GPU (far less) and this project's
# 2-core CPU (about 1-8 s per row for a 128-token answer), corrected by the first batch while it runs.
INITIAL_ROW_SECONDS = 2.0
_DONE = object()  # end-of-stream marker put on a stream's queue once its job has a result


class Overloaded(RagError):
    """The waiting list is full; try again after ``retry_after_s`` seconds."""

    def __init__(self, retry_after_s: float, message: str | None = None):
        self.retry_after_s = float(retry_after_s)
        super().__init__(
            message or f"the generator is busy (waiting list full); retry after {self.retry_after_s:.0f} s"
        )


class GenerationTimeout(RagError):
    """A request did not finish within its time limit."""


@dataclass(eq=False)
class _Job:
    """One queued unit of work for the worker: a generation, or a call (e.g. yes_probability) run alone."""

    deadline: float  # time.monotonic() after which the result is no longer wanted
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued_at: float = field(default_factory=time.monotonic)
    prompt: str = ""
    max_new_tokens: int = 0
    on_token: TokenCallback | None = None
    call: Callable[[], Any] | None = None  # set for a job that is not a generation
    abandoned: bool = False  # the caller gave up (timed out, cancelled, disconnected): stop working for it

    def unwanted(self, now: float | None = None) -> bool:
        """Whether nobody waits for this job's result any more."""
        return self.abandoned or self.future.done() or (now or time.monotonic()) > self.deadline


class BatchingGenerator:
    """Merges concurrent requests into batched ``generate_batch`` calls on one worker thread.

    ``initial_row_seconds`` is the cost of one row of a batch assumed for admission until a batch is measured.
    A batch holds at most ``settings.max_batch_size`` requests, and no more than the generator's
    ``preferred_batch_size`` when it has one (the CTranslate2 backend runs rows one at a time: batching them
    would only hold every row's result until the last is done).

    ``start()`` before submitting; ``stop()`` at shutdown fails whatever still waits. Exceptions raised by the
    generator reach every caller of that batch; the worker keeps serving.
    """

    def __init__(
        self, generator: Generator, settings: GenerationSettings, initial_row_seconds: float = INITIAL_ROW_SECONDS,
    ):
        for name in ("generate_batch", "yes_probability"):
            if not callable(getattr(generator, name, None)):
                raise TypeError(f"generator must have a {name}() method, got {type(generator).__name__}")
        self.generator = generator
        self.settings = settings
        preferred = getattr(generator, "preferred_batch_size", None)
        self.max_batch_size = min(settings.max_batch_size, preferred or settings.max_batch_size)
        self._waiting: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        if not initial_row_seconds > 0:
            raise ValueError(f"initial_row_seconds must be > 0, got {initial_row_seconds!r}")
        self._row_seconds = float(initial_row_seconds)  # seconds per row of a batch: measured (EWMA) once one ran
        self._in_progress: tuple[float, int] | None = None  # (monotonic start, rows) of the batch being generated
        self.batches_run = 0
        self.rows_stopped = 0  # rows of running batches stopped early because their caller was gone

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "BatchingGenerator":
        """Start the worker thread (idempotent)."""
        with self._cond:
            if self._running:
                return self
            if self._thread is not None and self._thread.is_alive():
                raise RuntimeError("the previous worker is still finishing its batch; call stop() again first")
            self._running = True
            self._thread = threading.Thread(target=self._work, name="rag-generator", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float | None = 30.0) -> None:
        """Stop the worker: jobs still waiting fail with Overloaded; a running batch finishes first."""
        with self._cond:
            self._running = False
            abandoned = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        for job in abandoned:
            _fail(job, Overloaded(self._row_seconds, "the generator is shutting down; retry on another replica"))
        if self._thread is not None:
            self._thread.join(timeout_s)
            if not self._thread.is_alive():
                self._thread = None

    @property
    def running(self) -> bool:
        """Whether the worker accepts jobs (between ``start()`` and ``stop()``)."""
        return self._running

    @property
    def waiting(self) -> int:
        """Jobs accepted but not started yet."""
        with self._cond:
            return len(self._waiting)

    # ------------------------------------------------------------------ submitting

    async def submit(
        self,
        prompt: str,
        max_new_tokens: int,
        on_token: TokenCallback | None = None,
        timeout_s: float | None = None,
    ) -> GenerationResult:
        """Generate for a rendered prompt; raises Overloaded at once when full, GenerationTimeout when late.

        ``on_token`` is called from the worker thread with each text delta: bridge it into asyncio with
        ``loop.call_soon_threadsafe`` (as ``stream`` does), never touch the loop from it directly.
        """
        timeout = self._timeout(timeout_s)
        job = self._generation_job(prompt, max_new_tokens, on_token, timeout)
        return await _await_job(self._enqueue(job), job, timeout)

    def submit_sync(
        self,
        prompt: str,
        max_new_tokens: int,
        on_token: TokenCallback | None = None,
        timeout_s: float | None = None,
    ) -> GenerationResult:
        """``submit`` for threads without an event loop (evals, scripts); blocks until done."""
        timeout = self._timeout(timeout_s)
        job = self._generation_job(prompt, max_new_tokens, on_token, timeout)
        future = self._enqueue(job)
        try:
            return _wait_future(future, timeout)
        finally:
            job.abandoned = True  # a no-op once the job is done; else its row stops at the next step

    async def stream(
        self, prompt: str, max_new_tokens: int, timeout_s: float | None = None
    ) -> AsyncIterator[str | GenerationResult]:
        """Yield text deltas as they are generated, then the final GenerationResult.

        Breaking out of the loop early (or the caller's task being cancelled) abandons the job: it leaves the
        waiting list, or its row stops at the next decode step.
        """
        timeout = self._timeout(timeout_s)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        listening = True

        def on_token(delta: str) -> None:  # worker thread
            if listening:
                loop.call_soon_threadsafe(queue.put_nowait, delta)

        job = self._generation_job(prompt, max_new_tokens, on_token, timeout)
        future = self._enqueue(job)
        # Deltas and this marker are scheduled from the same worker thread, so the marker arrives last.
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, _DONE))
        deadline = time.monotonic() + timeout
        try:
            while (item := await _get_before(queue, deadline)) is not _DONE:
                yield item
            yield future.result()
        finally:
            listening = False
            job.abandoned = True
            future.cancel()  # only succeeds when the job has not started

    async def yes_probability(self, prompts: list[str], timeout_s: float | None = None) -> list[float]:
        """``generator.yes_probability`` run on the worker thread, between batches, under the same limits."""
        timeout = self._timeout(timeout_s)
        job = _Job(deadline=time.monotonic() + timeout, call=lambda: self.generator.yes_probability(list(prompts)))
        return await _await_job(self._enqueue(job), job, timeout)

    def _generation_job(
        self, prompt: str, max_new_tokens: int, on_token: TokenCallback | None, timeout: float
    ) -> _Job:
        limit = self.settings.max_new_tokens_limit
        if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= limit:
            raise ValueError(
                f"max_new_tokens must be an integer from 1 to {limit} (generation.max_new_tokens_limit), "
                f"got {max_new_tokens!r}"
            )
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("prompt must be a non-empty string")
        return _Job(
            deadline=time.monotonic() + timeout, prompt=prompt, max_new_tokens=max_new_tokens, on_token=on_token
        )

    def _timeout(self, timeout_s: float | None) -> float:
        timeout = self.settings.request_timeout_s if timeout_s is None else float(timeout_s)
        if not timeout > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        return timeout

    def check_admission(self, timeout_s: float | None = None) -> None:
        """Raise Overloaded now when a job submitted now, with ``timeout_s`` in all, would be refused: callers
        that do costly work before submitting (the answer service's evidence scoring) refuse before it."""
        timeout = self._timeout(timeout_s)
        with self._cond:
            if not self._running:
                raise RuntimeError("BatchingGenerator.start() must be called before submitting")
            now = time.monotonic()
            self._drop_unwanted(now)
            self._refuse_if_full(now, now + timeout)

    def _enqueue(self, job: _Job) -> concurrent.futures.Future:
        """Add a job to the waiting list, or raise Overloaded at once; never blocks."""
        with self._cond:
            if not self._running:
                raise RuntimeError("BatchingGenerator.start() must be called before submitting")
            now = time.monotonic()
            self._drop_unwanted(now)
            self._refuse_if_full(now, job.deadline)
            self._waiting.append(job)
            self._cond.notify()
        return job.future

    def _refuse_if_full(self, now: float, deadline: float) -> None:
        """Overloaded when the waiting list is full, or when the work ahead would not let a job with
        ``deadline`` start in time (call with the lock held)."""
        if len(self._waiting) >= self.settings.queue_size:
            raise Overloaded(self._retry_after(now), "the generator is busy (waiting list full)")
        wait = self._wait_ahead(now)
        # Admit while idle whatever the estimate says, so that a bad estimate can always be measured again.
        busy = self._waiting or self._in_progress is not None
        if busy and now + wait + self._current_row_seconds(now) > deadline:
            raise Overloaded(
                self._retry_after(now),
                f"the generator is busy: about {wait:.0f} s of work is ahead, and this request may take "
                f"{deadline - now:.0f} s in all",
            )

    def _drop_unwanted(self, now: float) -> None:
        """Remove waiting jobs whose caller is gone; each is settled (GenerationTimeout) if it is not yet."""
        if not any(job.unwanted(now) for job in self._waiting):
            return
        kept: deque[_Job] = deque()
        for job in self._waiting:
            if job.unwanted(now):
                _fail(job, GenerationTimeout("the request was abandoned or passed its time limit while waiting"))
            else:
                kept.append(job)
        self._waiting = kept

    def _current_row_seconds(self, now: float) -> float:
        """Seconds per batch row: the measured estimate, raised when the running batch already took longer."""
        if self._in_progress is None:
            return self._row_seconds
        started, rows = self._in_progress
        return max(self._row_seconds, (now - started) / rows)

    def _wait_ahead(self, now: float) -> float:
        """Estimated seconds before a job submitted now could start: the rest of the running batch, then a row
        per waiting generation and per waiting call."""
        per_row = self._current_row_seconds(now)
        left = 0.0
        if self._in_progress is not None:
            started, rows = self._in_progress
            left = max(0.0, per_row * rows - (now - started))
        return left + per_row * len(self._waiting)

    def _retry_after(self, now: float) -> float:
        """Seconds until the work ahead has likely drained, from the measured batch time."""
        return max(1.0, round(self._wait_ahead(now), 1))

    def _record_batch(self, rows: int, elapsed: float, cut_short: bool) -> None:
        """Update seconds per row from a finished batch. A batch cut short (rows stopped early) only ever raises
        the estimate: its time says little about a full one."""
        measured = elapsed / max(1, rows)
        if cut_short:
            self._row_seconds = max(self._row_seconds, measured)
        else:
            self._row_seconds += _EWMA_WEIGHT * (measured - self._row_seconds)

    # ------------------------------------------------------------------ worker

    def _work(self) -> None:
        """Worker loop: take work, run it, repeat until stopped."""
        while (work := self._next_work()) is not None:
            if isinstance(work, _Job):
                self._run_call(work)
            else:
                self._run_batch(work)
            self.batches_run += 1

    def _next_work(self) -> list[_Job] | _Job | None:
        """Block for the next job; a call job comes alone, generations come as a batch. None once stopped."""
        with self._cond:
            while self._running and not self._waiting:
                self._cond.wait()
            if not self._running:
                return None
            head = self._waiting[0]
            if head.call is not None:
                return self._waiting.popleft()
            gather_until = head.enqueued_at + self.settings.batch_wait_ms / 1000
            while self._running and self._generations_waiting() < self.max_batch_size:
                remaining = gather_until - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if not self._running:
                return None
            return self._take_generations(self.max_batch_size)

    def _generations_waiting(self) -> int:
        return sum(job.call is None for job in self._waiting)

    def _take_generations(self, limit: int) -> list[_Job]:
        """Remove up to ``limit`` generation jobs in arrival order; call jobs keep their place."""
        taken: list[_Job] = []
        kept: deque[_Job] = deque()
        for job in self._waiting:
            (taken if job.call is None and len(taken) < limit else kept).append(job)
        self._waiting = kept
        return taken

    def _run_batch(self, jobs: list[_Job]) -> None:
        live = [job for job in jobs if _start(job)]
        if not live:
            return
        stopped: set[int] = set()

        def stop_row(row: int) -> Callable[[], bool]:
            def stop() -> bool:  # called by the generator once per decode step
                if row not in stopped and live[row].unwanted():
                    stopped.add(row)
                return row in stopped
            return stop

        started = time.monotonic()
        with self._cond:
            self._in_progress = (started, len(live))
        try:
            results = self.generator.generate_batch(
                [job.prompt for job in live],
                [job.max_new_tokens for job in live],
                [job.on_token for job in live],
                stop=[stop_row(row) for row in range(len(live))],
            )
            if len(results) != len(live):
                raise RuntimeError(f"generate_batch returned {len(results)} results for {len(live)} prompts")
        except BaseException as exc:  # every caller of the batch must hear about it, never hang
            log.exception("generation batch of %d failed", len(live))
            for job in live:
                _fail(job, exc)
            return
        finally:
            with self._cond:
                self._in_progress = None
                self._record_batch(len(live), time.monotonic() - started, cut_short=bool(stopped))
        self.rows_stopped += len(stopped)
        for row, (job, result) in enumerate(zip(live, results, strict=True)):
            if row in stopped:
                _fail(job, GenerationTimeout("the request passed its time limit or was abandoned while generating"))
            elif not job.future.done():
                job.future.set_result(result)

    def _run_call(self, job: _Job) -> None:
        if not _start(job):
            return
        try:
            assert job.call is not None
            job.future.set_result(job.call())
        except BaseException as exc:
            log.exception("generator call failed")
            _fail(job, exc)


def _start(job: _Job) -> bool:
    """Mark a job running; False (and the job is settled) when it was cancelled or its deadline passed."""
    if not job.future.set_running_or_notify_cancel():
        return False
    if job.abandoned:
        job.future.set_exception(GenerationTimeout("the request was abandoned before it started"))
        return False
    late_by = time.monotonic() - job.deadline
    if late_by > 0:
        job.future.set_exception(GenerationTimeout(f"the request waited past its time limit (by {late_by:.1f} s)"))
        return False
    return True


def _fail(job: _Job, exc: BaseException) -> None:
    if not job.future.done():
        try:
            job.future.set_exception(exc)
        except concurrent.futures.InvalidStateError:  # cancelled meanwhile
            pass


async def _await_job(future: concurrent.futures.Future, job: _Job, timeout: float) -> Any:
    """Await a worker future from asyncio; GenerationTimeout after ``timeout`` seconds. However the wait ends
    (result, timeout, the caller's task cancelled because its client went away), the job is then abandoned."""
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except TimeoutError as exc:
        raise GenerationTimeout(f"no result within {timeout:g} s (generation.request_timeout_s)") from exc
    finally:
        job.abandoned = True


def _wait_future(future: concurrent.futures.Future, timeout: float) -> Any:
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError as exc:
        future.cancel()  # only succeeds when the job has not started
        raise GenerationTimeout(f"no result within {timeout:g} s (generation.request_timeout_s)") from exc


async def _get_before(queue: asyncio.Queue, deadline: float) -> Any:
    try:
        return await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
    except TimeoutError as exc:
        raise GenerationTimeout("the stream did not finish within its time limit") from exc
