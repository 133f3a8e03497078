"""A small OpenAI-compatible server for the project's real generator: ``POST /v1/chat/completions`` (JSON and
streamed, with ``logprobs``/``top_logprobs``) and ``GET /v1/models``.

It stands in for vLLM, TGI, Ollama or a llama.cpp server when testing ``generation.backend = "openai"``: the
tests start it on a free port and point the service at it. Decoding is greedy (``temperature`` and sampling
parameters are ignored), one request at a time, token by token with the KV cache, so each streamed token
carries its log-probability and its top alternatives.

    python -m bench.openai_server --port 8002                 (the configured models.generator, loopback only)
    RAG_GENERATION__BACKEND=openai RAG_GENERATION__OPENAI__BASE_URL=http://127.0.0.1:8002/v1 rag-serve

``--no-logprobs`` makes it ignore requests for log-probabilities, as some servers do.

exit codes: 0 stopped normally; 2 bad arguments; 4 the generator model is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

if TYPE_CHECKING:
    from rag.generation.transformers_backend import TransformersGenerator

MAX_TOKENS = 1024  # the most a request may ask for
DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True)
class Step:
    """One generated token: its text delta (possibly empty while a multi-byte character is incomplete), its
    text alone, its log-probability and the top alternatives as (token text, log-probability)."""

    delta: str
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


def decode_steps(generator: "TransformersGenerator", messages: list[dict[str, str]], max_tokens: int,
                 top_k: int, cancelled: threading.Event) -> Iterator[Step | tuple[str, int]]:
    """Greedy decoding of the chat ``messages``: a Step per token, then ("stop" | "length", prompt tokens)."""
    import torch

    tokenizer, model = generator.tokenizer, generator.model
    prompt = generator.render_chat(messages)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(generator.device)
    prompt_tokens = int(ids.shape[1])
    stop_ids = set(generator.stop_ids)
    kept: list[int] = []
    emitted = 0
    past = None
    with torch.inference_mode():
        for _ in range(max_tokens):
            if cancelled.is_set():
                break
            out = model(input_ids=ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logp = out.logits[0, -1, :].float().log_softmax(dim=-1)  # (V,)
            token = int(logp.argmax())
            if token in stop_ids:
                yield ("stop", prompt_tokens)
                return
            kept.append(token)
            text = tokenizer.decode(kept, skip_special_tokens=True)
            delta = ""
            if not text.endswith("\ufffd") and len(text) > emitted:
                delta, emitted = text[emitted:], len(text)
            top: tuple[tuple[str, float], ...] = ()
            if top_k:
                values, indices = logp.topk(top_k)  # (k,), (k,)
                top = tuple((tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, indices))
            yield Step(delta, tokenizer.decode([token]), float(logp[token]), top)
            ids = torch.tensor([[token]], device=ids.device)  # (1, 1): the KV cache holds the rest
    text = tokenizer.decode(kept, skip_special_tokens=True)
    if len(text) > emitted:
        yield Step(text[emitted:], "", 0.0, ())  # a held-back tail; not a token (logprob 0.0 unused)
    yield ("length", prompt_tokens)


def create_openai_app(generator: "TransformersGenerator", model_name: str = "rag-generator",
                      logprobs: bool = True) -> FastAPI:
    """The server over a loaded generator. ``logprobs=False`` ignores requests for log-probabilities."""
    app = FastAPI(title="openai-compatible test server")
    lock = asyncio.Lock()  # one generation at a time: the model is not shared between threads

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "bench"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = await request.json()
            messages = [{"role": str(m["role"]), "content": _content(m.get("content"))} for m in body["messages"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise HTTPException(400, f"bad request: {exc!r}; send {{'messages': [{{'role', 'content'}}, ...]}}")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS:
            raise HTTPException(400, f"max_tokens must be an integer from 1 to {MAX_TOKENS}")
        want = logprobs and bool(body.get("logprobs"))
        top_k = int(body.get("top_logprobs") or 0) if want else 0
        fields = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_name}
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_stream(messages, max_tokens, top_k, want, usage, fields),
                                     media_type="text/event-stream")
        steps, finish, prompt_tokens = [], "stop", 0
        async for item in _steps(messages, max_tokens, top_k):
            if isinstance(item, Step):
                steps.append(item)
            else:
                finish, prompt_tokens = item
        tokens = [s for s in steps if s.token]
        choice = {
            "index": 0, "message": {"role": "assistant", "content": "".join(s.delta for s in steps)},
            "finish_reason": finish, "logprobs": {"content": [_entry(s) for s in tokens]} if want else None,
        }
        usage_out = {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens),
                     "total_tokens": prompt_tokens + len(tokens)}
        return JSONResponse({**fields, "object": "chat.completion", "choices": [choice], "usage": usage_out})

    async def _steps(messages: list[dict[str, str]], max_tokens: int, top_k: int) -> AsyncIterator[Any]:
        """decode_steps run in a thread, its items handed to the event loop; a client that leaves cancels it."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        done = object()

        def run() -> None:
            try:
                for item in decode_steps(generator, messages, max_tokens, top_k, cancelled):
                    loop.call_soon_threadsafe(queue.put_nowait, item)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        async with lock:
            worker = loop.run_in_executor(None, run)
            try:
                while (item := await queue.get()) is not done:
                    yield item
            finally:
                cancelled.set()
                await worker

    async def _stream(messages: list[dict[str, str]], max_tokens: int, top_k: int, want: bool, usage: bool,
                      fields: dict[str, Any]) -> AsyncIterator[bytes]:
        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            chunk = {**fields, "object": "chat.completion.chunk", "choices": choices, **extra}
            return f"data: {json.dumps(chunk)}\n\n".encode()

        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        completion = 0
        async for item in _steps(messages, max_tokens, top_k):
            if isinstance(item, Step):
                choice: dict[str, Any] = {"index": 0, "delta": {"content": item.delta}, "finish_reason": None}
                if want and item.token:
                    choice["logprobs"] = {"content": [_entry(item)]}
                completion += bool(item.token)
                yield event([choice])
            else:
                finish, prompt_tokens = item
                yield event([{"index": 0, "delta": {}, "finish_reason": finish}])
                if usage:
                    yield event([], usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                                           "total_tokens": prompt_tokens + completion})
        yield b"data: [DONE]\n\n"

    return app


def _content(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    raise TypeError(f"message content must be a string or a list of parts, got {type(content).__name__}")


def _entry(step: Step) -> dict[str, Any]:
    return {
        "token": step.token, "logprob": step.logprob, "bytes": list(step.token.encode("utf-8")),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in step.top],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.openai_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8002, help="port on 127.0.0.1 (default 8002)")
    parser.add_argument("--model-name", default="rag-generator", help="the id it answers to in /v1/models")
    parser.add_argument("--no-logprobs", action="store_true", help="ignore requests for log-probabilities")
    args = parser.parse_args(argv)
    import uvicorn

    from rag.generation.transformers_backend import TransformersGenerator
    from rag.answering.prompting import MARKER_WORDS
    from rag.errors import ModelUnavailable
    from rag.models import resolve_generator, select_device
    from rag.runtime import quiet_libraries
    from rag.settings import Settings

    quiet_libraries()
    settings = Settings()
    try:
        generator = TransformersGenerator(
            resolve_generator(settings.models), select_device(settings.models), settings.generation, MARKER_WORDS
        ).load()
    except ModelUnavailable as exc:
        print(f"openai_server: error: {exc}", file=sys.stderr)
        return 4
    app = create_openai_app(generator, args.model_name, logprobs=not args.no_logprobs)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
