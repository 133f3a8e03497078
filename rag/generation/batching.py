"""Dynamic batching: many concurrent requests, one worker thread owning the model.

Callers (asyncio handlers, or plain threads through ``submit_sync``) put jobs into a bounded waiting list and
get a future back. The worker takes the oldest job, waits up to ``batch_wait_ms`` (counted from that job's
arrival) for up to ``max_batch_size`` jobs, and runs them as ONE ``generate_batch`` call.

Admission control: a request is refused at once with ``Overloaded`` (the API's 503 + Retry-After) when the waiting
list is full, or when the work ahead of it and its own would not finish before its deadline. The estimate
(``rag.generation.admission.CostModel``) is measured on recent work: seconds per prompt token and per generated
token, the expected answer length per token budget, scaled up live while a running batch goes slower than that;
it is held to a margin (``ADMISSION_MARGIN``), because the machine may slow down further after the decision. A
caller that writes its prompt after deciding to generate (the answer service retrieves and scores evidence first)
reserves a place with ``admit`` before that work: a reservation counts as work ahead for the requests after it, so
a burst is refused on arrival, not after each request has spent its retrieval and evidence steps. Should the
machine slow down after all, waiting jobs that can no longer finish in time are refused (``Overloaded``) at the
next batch rather than left to time out. Whatever the estimate says, a request that finds the batcher idle is
admitted and run, so a wrong estimate (too slow) is always measured again rather than refusing everything from
then on. A job whose caller gave
up (deadline passed, client gone, task cancelled) leaves the waiting list, and its row of a running batch stops at
the next decode step; a batch whose rows have all stopped ends there, so the worker is free again for the next
question.

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
from rag.generation.admission import CostModel, FinishedRow, RowProgress, RunningBatch
from rag.generation.base import GenerationResult, Generator, TokenCallback
from rag.settings import GenerationSettings

log = logging.getLogger(__name__)

# Seconds per job until a batch has been measured: a guess between a GPU (far less) and this project's 2-core CPU
# (about 0.5-3 s for an answer), corrected live by the first batch and replaced by its measurement.
INITIAL_JOB_SECONDS = 2.0
# A request is admitted when the estimated work ahead of it plus its own, times this margin, fits in its time
# limit. The estimate is a mean (answer lengths vary) taken from the recent past (the machine's load changes):
# a quarter more keeps an admitted request within its limit when either is off by that much.
ADMISSION_MARGIN = 1.25
_DONE = object()  # end-of-stream marker put on a stream's queue once its job has a result


class Overloaded(RagError):
    """The generator cannot take (or finish) this request in time; try again after ``retry_after_s`` seconds."""

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
    # Admitted into an idle batcher, whatever the estimate said: it runs whatever the estimate says, so that an
    # estimate that is wrong (too slow) is measured again rather than refusing everything from then on.
    unchecked: bool = False

    def unwanted(self, now: float | None = None) -> bool:
        """Whether nobody waits for this job's result any more."""
        return self.abandoned or self.future.done() or (now or time.monotonic()) > self.deadline


class Admission:
    """A place reserved with ``BatchingGenerator.admit`` for a generation whose prompt is not written yet.

    Until it is used (pass it to ``submit``/``stream``) or released, it counts as work ahead for every later
    request. ``release()`` gives it back when the caller will not generate after all; it is idempotent, and a
    reservation unused past its deadline lapses by itself."""

    def __init__(self, batcher: "BatchingGenerator", max_new_tokens: int, deadline: float):
        self._batcher = batcher
        self.max_new_tokens = max_new_tokens
        self.deadline = deadline
        self.active = True

    def release(self) -> None:
        self._batcher._release(self)


class BatchingGenerator:
    """Merges concurrent requests into batched ``generate_batch`` calls on one worker thread.

    ``initial_job_seconds`` is the cost of a job assumed for admission until a batch is measured.
    A batch holds at most ``settings.max_batch_size`` requests, and no more than the generator's
    ``preferred_batch_size`` when it has one (the CTranslate2 backend runs rows one at a time: batching them
    would only hold every row's result until the last is done).

    ``start()`` before submitting; ``stop()`` at shutdown fails whatever still waits. Exceptions raised by the
    generator reach every caller of that batch; the worker keeps serving.
    """

    def __init__(
        self, generator: Generator, settings: GenerationSettings, initial_job_seconds: float = INITIAL_JOB_SECONDS,
    ):
        for name in ("generate_batch", "yes_probability"):
            if not callable(getattr(generator, name, None)):
                raise TypeError(f"generator must have a {name}() method, got {type(generator).__name__}")
        self.generator = generator
        self.settings = settings
        preferred = getattr(generator, "preferred_batch_size", None)
        self.max_batch_size = min(settings.max_batch_size, preferred or settings.max_batch_size)
        self._waiting: deque[_Job] = deque()
        self._reserved: list[Admission] = []
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self.costs = CostModel(initial_job_seconds)  # the admission estimate, measured on every batch
        self._batch: RunningBatch | None = None  # the batch being generated
        self.batches_run = 0
        self.rows_stopped = 0  # rows of running batches stopped early because their caller was gone
        self.refused_late = 0  # admitted jobs refused while waiting: the machine slowed down after admitting them

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
            for admission in self._reserved:
                admission.active = False
            self._reserved.clear()
            self._cond.notify_all()
        for job in abandoned:
            _fail(job, Overloaded(
                self.costs.initial_job_seconds, "the generator is shutting down; retry on another replica",
            ))
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

    @property
    def reserved(self) -> int:
        """Places reserved with ``admit`` and not used or released yet."""
        with self._cond:
            return len(self._reserved)

    @property
    def generating(self) -> bool:
        """Whether a batch is being generated now."""
        return self._batch is not None

    # ------------------------------------------------------------------ submitting

    def admit(self, max_new_tokens: int, timeout_s: float | None = None) -> Admission:
        """Reserve a place for a generation of up to ``max_new_tokens`` whose prompt is still to be written, or
        raise Overloaded now: what callers that do costly work before submitting (the answer service's evidence
        scoring) ask first, so that a request the generator cannot take is refused before that work.

        Pass the Admission to ``submit``/``stream`` (which use it up), or ``release()`` it."""
        timeout = self._timeout(timeout_s)
        _check_budget(max_new_tokens, self.settings.max_new_tokens_limit)
        with self._cond:
            if not self._running:
                raise RuntimeError("BatchingGenerator.start() must be called before submitting")
            now = time.monotonic()
            self._drop_unwanted(now)
            slowdown = self.costs.slowdown(self._batch, now)
            own = self.costs.job_seconds(self.costs.prompt_tokens(None), max_new_tokens, slowdown)
            self._refuse_if_late(now, now + timeout, own, slowdown, count_reserved=True)
            admission = Admission(self, max_new_tokens, now + timeout)
            self._reserved.append(admission)
        return admission

    async def submit(
        self,
        prompt: str,
        max_new_tokens: int,
        on_token: TokenCallback | None = None,
        timeout_s: float | None = None,
        admission: Admission | None = None,
    ) -> GenerationResult:
        """Generate for a rendered prompt; raises Overloaded at once when full, GenerationTimeout when late.

        ``on_token`` is called from the worker thread with each text delta: bridge it into asyncio with
        ``loop.call_soon_threadsafe`` (as ``stream`` does), never touch the loop from it directly.
        ``admission``, from ``admit``, is used up (released) whatever happens.
        """
        try:
            timeout = self._timeout(timeout_s)
            job = self._generation_job(prompt, max_new_tokens, on_token, timeout)
            future = self._enqueue(job, admission)
        finally:
            if admission is not None:
                admission.release()
        return await _await_job(future, job, timeout)

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
        self, prompt: str, max_new_tokens: int, timeout_s: float | None = None, admission: Admission | None = None,
    ) -> AsyncIterator[str | GenerationResult]:
        """Yield text deltas as they are generated, then the final GenerationResult.

        Breaking out of the loop early (or the caller's task being cancelled) abandons the job: it leaves the
        waiting list, or its row stops at the next decode step. ``admission``, from ``admit``, is used up.
        """
        try:
            timeout = self._timeout(timeout_s)
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[Any] = asyncio.Queue()
            listening = True

            def on_token(delta: str) -> None:  # worker thread
                if listening:
                    loop.call_soon_threadsafe(queue.put_nowait, delta)

            job = self._generation_job(prompt, max_new_tokens, on_token, timeout)
            future = self._enqueue(job, admission)
        finally:
            if admission is not None:
                admission.release()
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
        _check_budget(max_new_tokens, self.settings.max_new_tokens_limit)
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

    def _enqueue(self, job: _Job, admission: Admission | None = None) -> concurrent.futures.Future:
        """Add a job to the waiting list, or raise Overloaded at once; never blocks.

        A job with an active admission was judged when it was admitted (with the reservations before it counted as
        ahead, and the margin) and takes its place without a second verdict: between the two, the requests of a
        burst score their evidence side by side, and the live slowdown that contention shows while it lasts would
        refuse, after their evidence step, requests the machine does finish in time. Should the measured rates say
        it cannot, it is refused at the next batch (``_refuse_late``). Any other job must fit now, with the
        margin."""
        with self._cond:
            if not self._running:
                raise RuntimeError("BatchingGenerator.start() must be called before submitting")
            now = time.monotonic()
            self._drop_unwanted(now)
            if admission is not None and admission.active:
                self._release_locked(admission)
            else:
                slowdown = self.costs.slowdown(self._batch, now)
                own = self._job_seconds(job, slowdown)
                self._refuse_if_late(now, job.deadline, own, slowdown, count_reserved=False)
            job.unchecked = self._idle()
            self._waiting.append(job)
            self._cond.notify()
        return job.future

    def _release(self, admission: Admission) -> None:
        with self._cond:
            self._release_locked(admission)

    def _release_locked(self, admission: Admission) -> None:
        if admission.active:
            admission.active = False
            self._reserved.remove(admission)

    def _refuse_if_late(
        self, now: float, deadline: float, own_seconds: float, slowdown: float, count_reserved: bool,
    ) -> None:
        """Overloaded when the waiting list is full, or when the work ahead and ``own_seconds``, times
        ``ADMISSION_MARGIN``, would not finish by ``deadline``. Idle, anything is admitted whatever the estimate
        says, so that a bad estimate can always be measured again. Call with the lock held."""
        if len(self._waiting) + len(self._reserved) >= self.settings.queue_size:
            raise Overloaded(self._retry_after(now), "the generator is busy (waiting list full)")
        if self._idle():
            return
        ahead = self._seconds_ahead(now, slowdown, count_reserved)
        if (ahead + own_seconds) * ADMISSION_MARGIN > deadline - now:
            log.debug(
                "refused: %.1f s ahead (%d waiting, %d reserved, slowdown %.2f) + %.1f s own, %.1f s left",
                ahead, len(self._waiting), len(self._reserved), slowdown, own_seconds, deadline - now,
            )
            raise Overloaded(
                self._retry_after(now),
                f"the generator is busy: about {ahead:.1f} s of work is ahead and this request needs about "
                f"{own_seconds:.1f} s, within {deadline - now:.0f} s in all",
            )

    def _idle(self) -> bool:
        """Nothing running, waiting or reserved (call with the lock held)."""
        return not (self._waiting or self._reserved or self._batch is not None)

    def _drop_unwanted(self, now: float) -> None:
        """Remove waiting jobs whose caller is gone (each is settled: GenerationTimeout if it is not yet) and
        lapsed reservations."""
        for admission in [a for a in self._reserved if now > a.deadline]:
            self._release_locked(admission)
        if not any(job.unwanted(now) for job in self._waiting):
            return
        kept: deque[_Job] = deque()
        for job in self._waiting:
            if job.unwanted(now):
                _fail(job, GenerationTimeout("the request was abandoned or passed its time limit while waiting"))
            else:
                kept.append(job)
        self._waiting = kept

    def _job_seconds(self, job: _Job, slowdown: float) -> float:
        if job.call is not None:
            return self.costs.call_job_seconds(slowdown)
        return self.costs.job_seconds(self.costs.prompt_tokens(job.prompt), job.max_new_tokens, slowdown)

    def _seconds_ahead(self, now: float, slowdown: float, count_reserved: bool = True) -> float:
        """Estimated seconds before work submitted now could start: the rest of the running batch, every waiting
        job and (``count_reserved``) every reserved place."""
        ahead = self.costs.remaining_seconds(self._batch, now, slowdown)
        ahead += sum(self._job_seconds(job, slowdown) for job in self._waiting)
        if count_reserved:
            prompt_tokens = self.costs.prompt_tokens(None)
            ahead += sum(self.costs.job_seconds(prompt_tokens, a.max_new_tokens, slowdown) for a in self._reserved)
        return ahead

    def _retry_after(self, now: float) -> float:
        """Seconds until the work ahead has likely drained, reservations included."""
        return max(1.0, round(self._seconds_ahead(now, self.costs.slowdown(self._batch, now)), 1))

    def _refuse_late(self, now: float, taken: list[_Job]) -> list[_Job]:
        """The work ``taken`` to run next, less the jobs the estimate says can no longer finish by their deadline;
        those, and the waiting jobs behind that cannot either, are refused with Overloaded. The machine slowed
        down after they were admitted: a 503 now, with the time the rest needs, serves their callers better than a
        504 later. A job admitted while the batcher was idle (``unchecked``) always runs. Lock held."""
        late: list[_Job] = []
        kept_taken: list[_Job] = []
        for job in taken:
            if job.call is None and not job.unchecked and now + self._job_seconds(job, 1.0) > job.deadline:
                late.append(job)
            else:
                kept_taken.append(job)
        start = now + sum(self._job_seconds(job, 1.0) for job in kept_taken)
        kept: deque[_Job] = deque()
        for job in self._waiting:
            finish = start + self._job_seconds(job, 1.0)
            if finish > job.deadline and not job.unchecked:
                late.append(job)
            else:
                kept.append(job)
                start = finish
        self._waiting = kept
        if late:
            self.refused_late += len(late)
            retry_after = max(1.0, round(start - now, 1))
            for job in late:
                _fail(job, Overloaded(
                    retry_after, "the generator slowed down after this request was admitted: it can no longer "
                    f"finish within its time limit; retry after {retry_after:.0f} s",
                ))
        return kept_taken

    # ------------------------------------------------------------------ worker

    def _work(self) -> None:
        """Worker loop: take work, run it, repeat until stopped."""
        while (work := self._next_work()) is not None:
            if isinstance(work, _Job):
                self._run_call(work)
            else:
                self._run_batch(work)

    def _next_work(self) -> list[_Job] | _Job | None:
        """Block for the next job; a call job comes alone, generations come as a batch. None once stopped."""
        with self._cond:
            while True:
                while self._running and not self._waiting:
                    self._cond.wait()
                if not self._running:
                    return None
                head = self._waiting[0]
                if head.call is not None:
                    self._waiting.popleft()
                    if self._refuse_late(time.monotonic(), [head]):
                        return head
                    continue
                gather_until = head.enqueued_at + self.settings.batch_wait_ms / 1000
                while self._running and self._generations_waiting() < self.max_batch_size:
                    remaining = gather_until - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if not self._running:
                    return None
                batch = self._refuse_late(time.monotonic(), self._take_generations(self.max_batch_size))
                if batch:
                    return batch

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
            with self._cond:
                self.batches_run += 1
            return
        stopped: set[int] = set()
        batch = RunningBatch(
            started=time.monotonic(),
            rows=[RowProgress(self.costs.prompt_tokens(job.prompt), job.max_new_tokens) for job in live],
        )

        def stop_row(row: int) -> Callable[[], bool]:
            def stop() -> bool:  # called by the generator once per decode step
                batch.step(row)
                if row not in stopped and live[row].unwanted():
                    stopped.add(row)
                return row in stopped
            return stop

        with self._cond:
            self._batch = batch
        results: list[GenerationResult] | None = None
        error: BaseException | None = None
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
            results, error = None, exc
            log.exception("generation batch of %d failed", len(live))
        with self._cond:
            self._batch = None
            if results is not None:  # a failed batch measures nothing
                self.costs.record_batch(
                    [FinishedRow(r.prompt_tokens, r.completion_tokens, job.max_new_tokens, len(job.prompt),
                                 cut_short=row in stopped)
                     for row, (job, r) in enumerate(zip(live, results, strict=True))],
                    batch.started, batch.first_step, time.monotonic(),
                )
            # Counted before any caller hears its result: a caller that then reads these sees its own batch.
            self.rows_stopped += len(stopped)
            self.batches_run += 1
        if results is None:
            for job in live:
                _fail(job, error)
            return
        for row, (job, result) in enumerate(zip(live, results, strict=True)):
            if row in stopped:
                _fail(job, GenerationTimeout("the request passed its time limit or was abandoned while generating"))
            elif not job.future.done():
                job.future.set_result(result)

    def _run_call(self, job: _Job) -> None:
        if not _start(job):
            with self._cond:
                self.batches_run += 1
            return
        started = time.monotonic()
        value, error = None, None
        try:
            assert job.call is not None
            value = job.call()
        except BaseException as exc:
            log.exception("generator call failed")
            error = exc
        with self._cond:  # measured and counted before the caller hears the result, as for a batch
            self.costs.record_call(time.monotonic() - started)
            self.batches_run += 1
        if error is not None:
            _fail(job, error)
        else:
            job.future.set_result(value)


def _check_budget(max_new_tokens: int, limit: int) -> None:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or not 1 <= max_new_tokens <= limit:
        raise ValueError(
            f"max_new_tokens must be an integer from 1 to {limit} (generation.max_new_tokens_limit), "
            f"got {max_new_tokens!r}"
        )


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
