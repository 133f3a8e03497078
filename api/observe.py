"""Per-request observation: a request id on every exchange, HTTP metrics, and one log line per question.

``ObserveRequests`` (the outermost middleware) takes a sane ``X-Request-ID`` from the client or makes one,
echoes it on the response (errors included; a 500 from the last-resort handler adds it there, see
``api.app``), keeps it in ``request.state.request_id`` and ``api.logs.REQUEST_ID``, and counts the request by
route template and status. ``ObservedAnswers`` wraps the answer service a route gets: each final Answer
updates the metrics and writes the question's structured log line.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.logs import REQUEST_ID, key_values
from api.metrics import Metrics
from rag.types import Answer

REQUEST_ID_HEADER = "X-Request-ID"
# What a client may send as its own id: what tracing systems use (UUIDs, hex, dotted or dashed ids), short enough
# to log; anything else is replaced, never echoed (no header or log injection).
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
UNMATCHED = "unmatched"  # the route label of requests no route matched (keeps the label set bounded)

question_log = logging.getLogger("rag.questions")


def request_id_from(headers: Headers) -> str:
    """The client's X-Request-ID when it is sane, else a new one (32 hex digits)."""
    given = headers.get(REQUEST_ID_HEADER, "")
    return given if SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


class ObserveRequests:
    """ASGI middleware: request id in and out, and the request counted in ``metrics``."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(Headers(scope=scope))
        scope.setdefault("state", {})["request_id"] = request_id
        token = REQUEST_ID.set(request_id)
        status = 500  # what the client gets when the app raises (the last-resort handler answers 500)
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(route, scope["method"]).observe(time.perf_counter() - started)
            REQUEST_ID.reset(token)


class ObservedAnswers:
    """The answer service as a route uses it (``answer``, ``stream``; anything else passes through), with each
    final Answer counted in ``metrics`` and logged as one line on the ``rag.questions`` logger."""

    def __init__(self, service: Any, metrics: Metrics, request_id: str | None, collection: str = "default"):
        self.service = service
        self.metrics = metrics
        self.request_id = request_id
        self.collection = collection

    def __getattr__(self, name: str) -> Any:
        return getattr(self.service, name)

    async def answer(self, question: str, *args: Any, **kwargs: Any) -> Answer:
        answer = await self.service.answer(question, *args, **kwargs)
        self._record(answer)
        return answer

    async def stream(self, question: str, *args: Any, **kwargs: Any) -> AsyncIterator[str | Answer]:
        stream = self.service.stream(question, *args, **kwargs)
        try:
            async for item in stream:
                if isinstance(item, Answer):
                    self._record(item)
                yield item
        finally:
            await stream.aclose()

    def _record(self, answer: Answer) -> None:
        self.metrics.observe_answer(answer, self.collection)
        fields = question_fields(answer, self.request_id, self.collection)
        question_log.info("question %s", key_values(fields), extra={"fields": fields})


def question_fields(answer: Answer, request_id: str | None, collection: str) -> dict[str, Any]:
    """The structured record of one question: who asked (request id), where, the verdict and how sure, how long
    each stage took, the tokens, and the documents cited (none on an abstention: its passages are not sources)."""
    cited = [] if answer.abstained else list(dict.fromkeys(c.document for c in answer.citations))
    timings = {f"{k.removesuffix('_s')}_s": round(v, 4) for k, v in answer.timings.items()}
    return {
        "event": "question",
        "request_id": request_id,
        "collection": collection,
        "verdict": "abstained" if answer.abstained else "answered",
        "confidence": None if answer.confidence is None else round(answer.confidence, 4),
        "latency_s": timings.pop("total_s", None),
        **timings,
        "prompt_tokens": answer.usage.get("prompt_tokens", 0),
        "completion_tokens": answer.usage.get("completion_tokens", 0),
        "cited_documents": cited,
        "reason": answer.reason,
    }
