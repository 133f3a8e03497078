"""The naive server for bench.serve: our /v1/query without dynamic batching.

Everything but generation is the real service: the same route (api.routes.query: JSON and server-sent
events), the same retrieval, relevance gate, prompt and verification (``rag.answering.service.AnswerService``). Only
the batcher is swapped, through ``app.dependency_overrides``, for ``SerialGenerator``: one ``generate`` call
per request, one request at a time behind a lock. The ratio of the two servers' requests/s is then what
dynamic batching buys.

    python -m bench.naive_server --index rag-index --port 8001      (loopback only)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from rag.runtime import Runtime
    from rag.generation.base import GenerationResult
    from rag.generation.transformers_backend import TransformersGenerator
    from rag.settings import Settings


class SerialGenerator:
    """The ``stream`` (and ``admit``) that AnswerService needs from a batcher, without batching: each
    request runs its own ``generate_batch([prompt])`` in a thread, after the previous one finished (an asyncio
    lock, so waiting requests hold no thread). No admission control: every request waits its turn."""

    def __init__(self, llm: "TransformersGenerator"):
        self.llm = llm
        self._lock = asyncio.Lock()
        self.generate_calls = 0

    def admit(self, max_new_tokens: int, timeout_s: float | None = None) -> None:
        """Admits everything (the naive server queues without limit), reserving nothing."""

    async def stream(
        self, prompt: str, max_new_tokens: int, timeout_s: float | None = None, admission: None = None,
    ) -> AsyncIterator["str | GenerationResult"]:
        """Text deltas, then the GenerationResult; GenerationTimeout past ``timeout_s`` (waiting included)."""
        from rag.generation.batching import GenerationTimeout

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()
        deadline = time.monotonic() + (timeout_s or 120.0)

        def on_token(delta: str) -> None:  # generation thread
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        def run() -> "GenerationResult":
            try:
                return self.llm.generate_batch([prompt], [max_new_tokens], [on_token])[0]
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        # Deadline checks at each await, not asyncio.timeout: the route reads the first delta in the request's
        # task and the rest in the response's, so no timeout context may span the yields.
        try:
            await asyncio.wait_for(self._lock.acquire(), max(0.0, deadline - time.monotonic()))
        except TimeoutError as exc:
            raise GenerationTimeout(f"waited {timeout_s:g} s for the model (generation.request_timeout_s)") from exc
        try:
            self.generate_calls += 1
            future = loop.run_in_executor(None, run)
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
                except TimeoutError as exc:
                    raise GenerationTimeout(f"no result within {timeout_s:g} s") from exc
                if item is done:
                    break
                yield item
            yield await future
        finally:
            self._lock.release()


def create_naive_app(settings: "Settings", runtime: "Runtime") -> "FastAPI":
    """/v1/query, /healthz and /readyz over a started ``runtime``, answering through ``SerialGenerator``."""
    from fastapi import FastAPI, Request, status
    from fastapi.responses import JSONResponse

    from api.deps import get_answers
    from api.routes import health, query
    from rag.answering.service import AnswerService
    from rag.collections import Collections
    from rag.generation.batching import GenerationTimeout

    if runtime.answers is None or runtime.llm is None:
        raise ValueError("the naive server needs a Runtime started with its generator")
    serial = SerialGenerator(runtime.llm)
    answers = AnswerService(runtime.retriever, runtime.llm, serial, settings, runtime.answers.calibrator)

    app = FastAPI(title="grounded-rag (naive, no batching)")
    app.state.settings = settings
    app.state.runtime = runtime
    # /readyz reads the documents through the collections (api.deps.get_documents); create_app builds them in its
    # lifespan, this app has none, so without them /readyz answered 503 forever and bench.serve gave up on it.
    app.state.collections = Collections(runtime)
    app.state.serial = serial
    app.include_router(health.public)
    app.include_router(health.router)
    app.include_router(query.router)
    app.dependency_overrides[get_answers] = lambda: answers

    async def timed_out(request: Request, exc: GenerationTimeout) -> JSONResponse:
        return JSONResponse({"detail": f"generation timed out: {exc}"}, status.HTTP_504_GATEWAY_TIMEOUT)

    app.add_exception_handler(GenerationTimeout, timed_out)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.naive_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit codes: 0 stopped normally; 2 bad arguments or no index at --index.")
    parser.add_argument("--index", type=Path, required=True, help="index folder (built by rag-ingest)")
    parser.add_argument("--port", type=int, default=8001, help="port on 127.0.0.1 (default 8001)")
    args = parser.parse_args(argv)
    if not (args.index / "store.sqlite").exists():
        parser.error(f"no index at {args.index}: run `rag-ingest DOCS_DIR --index {args.index}` first")
    import uvicorn

    from rag.runtime import Runtime, quiet_libraries
    from rag.settings import Settings

    quiet_libraries()
    settings = Settings().with_overrides({"index": {"path": args.index}})
    runtime = Runtime(settings).start()
    try:
        uvicorn.run(create_naive_app(settings, runtime), host="127.0.0.1", port=args.port, log_level="warning")
    finally:
        runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
