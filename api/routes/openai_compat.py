"""POST /v1/chat/completions: the query endpoint in OpenAI's format, so the official clients work unchanged;
GET /v1/models lists the collections as models, which is how chat front ends offer a choice.

The last user message is the question; ``model`` names the collection (``rag`` is ``default``). A follow-up
that needs the earlier turns ("Where was it exhibited?") is rewritten into a standalone question first
(``rag.answering.followup``), reported as ``rag.question``. The answer is ``choices[0].message.content``; the
citations and the abstention verdict ride in extra top-level fields ``citations`` and ``rag`` (in the last
chunk when streaming; an abstention's nearest passages in ``rag.nearest``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException, status
from fastapi.sse import EventSourceResponse, format_sse_event

from api.deps import AnswersDep, CollectionsDep, ValidChat
from api.json_body import StandardJsonRoute
from api.routes.query import SSE_HEADERS, Events, error_detail, open_stream
from api.schemas import (
    BAD_BODY, AssistantMessage, ChatChoice, ChatCompletionChunk, ChatCompletionResponse, ChunkChoice, ChunkDelta,
    ErrorOut, ModelList, ModelOut, Usage, citation_out, rag_info,
)
from rag.answering.followup import FollowupRewriter, Rewrite
from rag.types import Answer

router = APIRouter(tags=["openai"], route_class=StandardJsonRoute)


@router.get("/v1/models", response_model=ModelList)
def list_models(collections: CollectionsDep) -> ModelList:
    """One model per collection: its id is the ``model`` a chat completion answers from."""
    return ModelList(data=[ModelOut(id=name) for name in collections.names()])


@router.get("/v1/models/{model}", response_model=ModelOut, responses={404: {"model": ErrorOut}})
def get_model(model: str, collections: CollectionsDep) -> ModelOut:
    """One collection as a model; 404 when there is none of that name."""
    if model not in collections.names():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model {model!r}: GET /v1/models lists them")
    return ModelOut(id=model)


@router.post(
    "/v1/chat/completions", response_model=ChatCompletionResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **BAD_BODY},
)
async def chat_completions(body: ValidChat, answers: AnswersDep):
    """OpenAI-compatible chat completion over the indexed documents (``stream`` supported)."""
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    history = body.history()
    # A single message has nothing to refer back to: searched as it is, without building a rewriter.
    rewrite = (await FollowupRewriter.for_answers(answers).rewrite(body.question, history) if history
               else Rewrite(body.question, body.question, "unchanged"))
    if not body.stream:
        answer = await answers.answer(rewrite.question, body.top_k, body.max_new_tokens)
        return ChatCompletionResponse(
            id=completion_id, created=created, model=body.model,
            choices=[ChatChoice(message=AssistantMessage(content=answer.text))],
            usage=Usage.from_answer(answer), citations=[citation_out(c) for c in answer.citations],
            rag=rag_info(answer, rewrite),
        )
    events = await open_stream(answers, rewrite.question, body.top_k, body.max_new_tokens)
    chunk = _ChunkMaker(completion_id, created, body.model)
    return EventSourceResponse(_chunks(events, chunk, rewrite), headers=SSE_HEADERS)


class _ChunkMaker:
    def __init__(self, completion_id: str, created: int, model: str):
        self.fields = {"id": completion_id, "created": created, "model": model}

    def __call__(self, delta: ChunkDelta, finish: str | None = None, **extra) -> bytes:
        chunk = ChatCompletionChunk(**self.fields, choices=[ChunkChoice(delta=delta, finish_reason=finish)], **extra)
        return format_sse_event(data_str=chunk.model_dump_json(exclude_none=True))


async def _chunks(events: Events, chunk: _ChunkMaker, rewrite: Rewrite) -> AsyncIterator[bytes]:
    yield chunk(ChunkDelta(role="assistant", content=""))
    streamed = False
    try:
        async for item in events:
            if isinstance(item, Answer):
                if not streamed:  # abstained before generating: the abstention is the content
                    yield chunk(ChunkDelta(content=item.text))
                yield chunk(
                    ChunkDelta(), "stop", usage=Usage.from_answer(item), citations=[citation_out(c) for c in item.citations],
                    rag=rag_info(item, rewrite),
                )
            elif item:
                streamed = True
                yield chunk(ChunkDelta(content=item))
    except Exception as exc:  # noqa: BLE001 - mid-stream failure, in the shape OpenAI clients raise on
        error = {"error": {"message": error_detail(exc), "type": "server_error"}}
        yield format_sse_event(data_str=json.dumps(error))
        return
    yield format_sse_event(data_str="[DONE]")
