"""Dynamic batching: many concurrent requests, one worker thread owning the model.

Callers (asyncio handlers, or plain threads through ``submit_sync``) put jobs into a bounded waiting list and
get a future back. The worker takes the oldest job, waits up to ``batch_wait_ms`` (counted from that job's
arrival) for up to ``max_batch_size`` jobs, and runs them as ONE ``generate_batch`` call. A full waiting list
answers at once with ``Overloaded`` (the API's 503 + Retry-After) instead of letting callers pile up.

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
from rag.answering.generation import GenerationResult, Generator, TokenCallback
from rag.settings import GenerationSettings

log = logging.getLogger(__name__)

_EWMA_WEIGHT = 0.3  # weight of the newest batch in the running estimate of batch duration
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


class BatchingGenerator:
    """Merges concurrent requests into batched ``generate_batch`` calls on one worker thread.

    ``start()`` before submitting; ``stop()`` at shutdown fails whatever still waits. Exceptions raised by the
    generator reach every caller of that batch; the worker keeps serving.
    """

    def __init__(self, generator: Generator, settings: GenerationSettings):
        for name in ("generate_batch", "yes_probability"):
            if not callable(getattr(generator, name, None)):
                raise TypeError(f"generator must have a {name}() method, got {type(generator).__name__}")
        self.generator = generator
        self.settings = settings
        self._waiting: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self._batch_seconds = 1.0  # running estimate of one batch's duration, for Retry-After
        self.batches_run = 0

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
            _fail(job, Overloaded(self._batch_seconds, "the generator is shutting down; retry on another replica"))
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
        future = self._enqueue(self._generation_job(prompt, max_new_tokens, on_token, timeout))
        return await _await_future(future, timeout)

    def submit_sync(
        self,
        prompt: str,
        max_new_tokens: int,
        on_token: TokenCallback | None = None,
        timeout_s: float | None = None,
    ) -> GenerationResult:
        """``submit`` for threads without an event loop (evals, scripts); blocks until done."""
        timeout = self._timeout(timeout_s)
        future = self._enqueue(self._generation_job(prompt, max_new_tokens, on_token, timeout))
        return _wait_future(future, timeout)

    async def stream(
        self, prompt: str, max_new_tokens: int, timeout_s: float | None = None
    ) -> AsyncIterator[str | GenerationResult]:
        """Yield text deltas as they are generated, then the final GenerationResult.

        Breaking out of the loop early leaves the job to finish in the background (its deltas are dropped).
        """
        timeout = self._timeout(timeout_s)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        listening = True

        def on_token(delta: str) -> None:  # worker thread
            if listening:
                loop.call_soon_threadsafe(queue.put_nowait, delta)

        future = self._enqueue(self._generation_job(prompt, max_new_tokens, on_token, timeout))
        # Deltas and this marker are scheduled from the same worker thread, so the marker arrives last.
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, _DONE))
        deadline = time.monotonic() + timeout
        try:
            while (item := await _get_before(queue, deadline)) is not _DONE:
                yield item
            yield future.result()
        finally:
            listening = False
            future.cancel()  # only succeeds when the job has not started

    async def yes_probability(self, prompts: list[str], timeout_s: float | None = None) -> list[float]:
        """``generator.yes_probability`` run on the worker thread, between batches, under the same limits."""
        timeout = self._timeout(timeout_s)
        job = _Job(deadline=time.monotonic() + timeout, call=lambda: self.generator.yes_probability(list(prompts)))
        return await _await_future(self._enqueue(job), timeout)

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

    def _enqueue(self, job: _Job) -> concurrent.futures.Future:
        """Add a job to the waiting list, or raise Overloaded at once; never blocks."""
        with self._cond:
            if not self._running:
                raise RuntimeError("BatchingGenerator.start() must be called before submitting")
            if len(self._waiting) >= self.settings.queue_size:
                raise Overloaded(self._retry_after())
            self._waiting.append(job)
            self._cond.notify()
        return job.future

    def _retry_after(self) -> float:
        """Seconds until the waiting list has likely drained by a batch: the batches ahead times their duration."""
        batches_ahead = math.ceil(len(self._waiting) / self.settings.max_batch_size)
        return max(1.0, round(batches_ahead * self._batch_seconds, 1))

    # ------------------------------------------------------------------ worker

    def _work(self) -> None:
        """Worker loop: take work, run it, repeat until stopped."""
        while (work := self._next_work()) is not None:
            started = time.monotonic()
            if isinstance(work, _Job):
                self._run_call(work)
            else:
                self._run_batch(work)
            elapsed = time.monotonic() - started
            self._batch_seconds += _EWMA_WEIGHT * (elapsed - self._batch_seconds)
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
            while self._running and self._generations_waiting() < self.settings.max_batch_size:
                remaining = gather_until - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if not self._running:
                return None
            return self._take_generations(self.settings.max_batch_size)

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
        try:
            results = self.generator.generate_batch(
                [job.prompt for job in live],
                [job.max_new_tokens for job in live],
                [job.on_token for job in live],
            )
            if len(results) != len(live):
                raise RuntimeError(f"generate_batch returned {len(results)} results for {len(live)} prompts")
        except BaseException as exc:  # every caller of the batch must hear about it, never hang
            log.exception("generation batch of %d failed", len(live))
            for job in live:
                _fail(job, exc)
            return
        for job, result in zip(live, results, strict=True):
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


async def _await_future(future: concurrent.futures.Future, timeout: float) -> Any:
    """Await a worker future from asyncio; GenerationTimeout after ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except TimeoutError as exc:
        raise GenerationTimeout(f"no result within {timeout:g} s (generation.request_timeout_s)") from exc


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
