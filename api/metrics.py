"""Prometheus metrics for one app: ``Metrics`` owns its own ``CollectorRegistry`` (never the global one, so that
several apps in one process, as in the tests, count apart), and ``GET /metrics`` serves it in the text format.

What is counted, and where it comes from:
- HTTP requests by route template, method and status, and their latency (``api.observe.ObserveRequests``);
- per question (``api.observe.ObservedAnswers``): verdict (answered/abstained) by collection, the stage timings
  the Answer carries (retrieve, evidence, generate, total), the calibrated confidence, prompt and completion
  tokens. The abstention rate is a query over the verdict counter:
  ``sum(rate(rag_questions_total{verdict="abstained"}[5m])) / sum(rate(rag_questions_total[5m]))``;
- the generator's waiting list (read at each scrape from the batcher);
- uploads through POST /v1/documents: documents by outcome, chunks added, failures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from rag.types import Answer

# Seconds: from a cached retrieval (ms) to a long answer on a busy CPU (a minute or two).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
CONFIDENCE_BUCKETS = tuple(i / 10 for i in range(1, 11))


class Metrics:
    """Every metric of one app, registered in ``self.registry``. ``queue_depth`` is called at each scrape."""

    def __init__(self, queue_depth: Callable[[], float] = lambda: 0.0):
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "rag_http_requests", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=r,
        )
        self.request_seconds = Histogram(
            "rag_http_request_duration_seconds", "Time to the end of each HTTP response, by route template.",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.questions = Counter(
            "rag_questions", "Questions answered, by collection and verdict (answered or abstained).",
            ["collection", "verdict"], registry=r,
        )
        self.stage_seconds = Histogram(
            "rag_answer_stage_seconds", "Seconds per answering stage (retrieve, evidence, generate, total).",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.confidence = Histogram(
            "rag_answer_confidence", "Calibrated confidence of each generated answer (answered or not).",
            buckets=CONFIDENCE_BUCKETS, registry=r,
        )
        self.tokens = Counter("rag_tokens", "Generator tokens, by kind (prompt, completion).", ["kind"], registry=r)
        self.queue = Gauge("rag_generator_queue_depth", "Generation requests waiting for the generator.", registry=r)
        self.queue.set_function(queue_depth)
        self.documents = Counter(
            "rag_ingest_documents", "Documents uploaded through the API, by outcome (new, changed, unchanged).",
            ["status"], registry=r,
        )
        self.chunks = Counter("rag_ingest_chunks", "Chunks added to the index by uploads.", registry=r)
        self.ingest_failures = Counter("rag_ingest_failures", "Uploads refused or failed.", registry=r)

    def observe_answer(self, answer: Answer, collection: str) -> None:
        self.questions.labels(collection, "abstained" if answer.abstained else "answered").inc()
        for key, seconds in answer.timings.items():
            self.stage_seconds.labels(key.removesuffix("_s")).observe(seconds)
        if answer.confidence is not None:
            self.confidence.observe(answer.confidence)
        for kind in ("prompt", "completion"):
            self.tokens.labels(kind).inc(answer.usage.get(f"{kind}_tokens", 0))

    def observe_upload(self, status: str, chunks: int) -> None:
        self.documents.labels(status).inc()
        if status != "unchanged":
            self.chunks.inc(chunks)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


MetricsDep = Annotated[Metrics, Depends(get_metrics)]

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(registry: MetricsDep) -> Response:
    """Prometheus metrics (text format): requests, per-stage latency, verdicts, confidence, tokens, queue, ingest."""
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
