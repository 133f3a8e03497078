"""POST /v1/query: a grounded answer with page citations, as JSON or as server-sent events."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.sse import EventSourceResponse, format_sse_event

from api.deps import AnswersDep, ValidQuery
from api.json_body import StandardJsonRoute
from api.schemas import BAD_BODY, QueryResponse, TokenEvent
from rag.answering.service import AnswerService
from rag.generation.batching import GenerationTimeout, Overloaded
from rag.generation.openai_client import GeneratorUnavailable
from rag.types import Answer

log = logging.getLogger(__name__)
router = APIRouter(tags=["query"], route_class=StandardJsonRoute)

Events = AsyncIterator["str | Answer"]
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the token stream

STREAM_DESCRIPTION = """\
With `"stream": true` the answer comes as `text/event-stream`: one `event: token` per text delta
(`data: {"text": ...}`), then one `event: final` whose data is the full response object (authoritative:
verification may turn a streamed draft into an abstention), then `event: done`. A failure after the stream
began is an `event: error` with `data: {"detail": ...}`; one before it is the usual HTTP error status."""


@router.post(
    "/v1/query", response_model=QueryResponse, description=STREAM_DESCRIPTION,
    responses={200: {"content": {"text/event-stream": {}}}, **BAD_BODY},
)
async def query(body: ValidQuery, answers: AnswersDep):
    """Answer a question from the indexed documents, citing pages, or abstain."""
    if not body.stream:
        answer = await answers.answer(body.question, body.top_k, body.max_new_tokens)
        return QueryResponse.from_answer(answer)
    events = await open_stream(answers, body.question, body.top_k, body.max_new_tokens)
    return EventSourceResponse(_query_events(events), headers=SSE_HEADERS)


async def open_stream(answers: AnswerService, question: str, top_k: int | None, max_new_tokens: int | None) -> Events:
    """The pipeline's events, with the first one already awaited.

    Failures before the first event (the queue is full, a timeout) raise here, inside the route, so the
    exception handlers turn them into a 503/504 rather than an error event in a 200 stream.
    """
    stream = answers.stream(question, top_k, max_new_tokens)
    first = await anext(stream)

    async def events() -> Events:
        try:
            yield first
            async for item in stream:
                yield item
        finally:
            await stream.aclose()  # the client went away: stop generating for it

    return events()


def error_detail(exc: Exception) -> str:
    """What a client is told about a failure in the middle of a stream."""
    if isinstance(exc, (Overloaded, GenerationTimeout, GeneratorUnavailable)):
        return str(exc)
    log.error("streamed answer failed", exc_info=exc)
    return "internal error"


def _sse(event: str, data: str) -> bytes:
    return format_sse_event(event=event, data_str=data)


async def _query_events(events: Events) -> AsyncIterator[bytes]:
    try:
        async for item in events:
            if isinstance(item, Answer):
                yield _sse("final", QueryResponse.from_answer(item).model_dump_json())
            else:
                yield _sse("token", TokenEvent(text=item).model_dump_json())
    except Exception as exc:  # noqa: BLE001 - the status line is gone; the client learns it from the stream
        yield _sse("error", json.dumps({"detail": error_detail(exc)}))
        return
    yield _sse("done", "{}")
