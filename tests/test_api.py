"""The HTTP API over the real pipeline: the session Runtime (real embedder, index and generator) behind
``create_app(settings, runtime=...)``, exercised with FastAPI's TestClient. Other parts come from
``runtime.derive`` (another index, other limits) and reach the routes through ``app.dependency_overrides``;
fakes only where the real part cannot fail on demand (an unexpected error, a stream that breaks midway).

Tests marked e2e generate text (kept to a few dozen tokens: this CPU makes ~15-30 tokens/s).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import get_answers, get_documents
from rag.generation.batching import BatchingGenerator, GenerationTimeout, Overloaded
from rag.answering.service import AnswerService

# squad2-dev questions (gold answer, gold page, document), checked against the PDF. This one clears the relevance
# gate (cosine 0.699 >= retrieval.min_relevance 0.60).
ANSWERABLE = ("What company developed the most successful steam engine indicator?", "Porter", 3, "Steam_engine.pdf")
CANARY = ("What continent are the Canarian Islands off the coast of?", "Africa", 6)
UNANSWERABLE = "What is the capital of Australia?"
TOKENS = 32
TOP_K = 3  # a shorter prompt: prefill dominates the time on this CPU


@pytest.fixture(scope="module")
def client(runtime):
    with TestClient(create_app(runtime.settings, runtime=runtime)) as client:
        yield client


def cites_page(citations: list[dict], document: str, page: int) -> bool:
    return any(c["document"] == document and c["pages"][0] <= page <= c["pages"][1] for c in citations)


def sse_events(text: str) -> list[tuple[str, dict]]:
    """(event, data) pairs of a text/event-stream body."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


# ---------------------------------------------------------------------------------------- health, listing


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["documents"] == 2 and ready.json()["chunks"] > 0


def test_readyz_is_503_with_reason_on_an_empty_index(runtime, tmp_path):
    with runtime.derive({"index": {"path": tmp_path / "index"}}) as empty:
        app = create_app(runtime.settings, runtime=runtime)
        app.dependency_overrides[get_documents] = lambda: empty.documents
        with TestClient(app) as client:
            response = client.get("/readyz")
            assert client.get("/healthz").status_code == 200
    assert response.status_code == 503
    assert "no chunks" in response.json()["detail"] and str(tmp_path / "index") in response.json()["detail"]


def test_readyz_is_503_without_a_runtime(runtime):
    app = create_app(runtime.settings, runtime=runtime)
    with TestClient(app) as client:
        app.state.runtime = None  # as outside the lifespan
        response = client.get("/readyz")
        app.state.runtime = runtime
    assert response.status_code == 503 and "starting or stopping" in response.json()["detail"]


def test_list_documents(client):
    response = client.get("/v1/documents")
    assert response.status_code == 200
    docs = {d["document"]: d for d in response.json()}
    assert set(docs) == {"Normans.pdf", "Steam_engine.pdf"}
    normans = docs["Normans.pdf"]
    assert normans["source"] == "folder" and normans["collection"] == "default"
    assert normans["pages"] >= 6 and normans["chunks"] > 0
    assert normans["size_bytes"] > 0 and len(normans["content_hash"]) == 64 and normans["ingested_at"]


# ----------------------------------------------------------------------------------------------- answers


def assert_answered(body: dict, answer: str, page: int, document: str = "Normans.pdf") -> None:
    assert not body["abstained"], body
    assert answer.lower() in body["answer"].lower(), body
    assert cites_page(body["citations"], document, page), body["citations"]


@pytest.mark.e2e
def test_answerable_question_is_answered_with_the_gold_page(client):
    question, answer, page, document = ANSWERABLE
    response = client.post("/v1/query", json={"question": question, "top_k": TOP_K, "max_new_tokens": TOKENS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert_answered(body, answer, page, document)
    assert 0.0 <= body["support"] <= 1.0 and -1.0 <= body["relevance"] <= 1.0
    assert body["timings"]["total_s"] > 0
    assert set(body["citations"][0]) == {"document", "pages", "snippet", "score", "chunk_id"}


@pytest.mark.e2e
@pytest.mark.xfail(
    strict=True,
    reason="pipeline: the gold passage (Normans.pdf p. 6, '...off the Atlantic coast of Africa') ranks first, but "
    "its cosine similarity 0.287 gives a confidence of about 0.05, below the calibrator's threshold (a cosine near "
    "0.63 for a span), so the service abstains",
)
def test_canarian_islands_question_is_answered(client):
    question, answer, page = CANARY
    response = client.post("/v1/query", json={"question": question, "top_k": TOP_K, "max_new_tokens": TOKENS})
    assert response.status_code == 200, response.text
    assert_answered(response.json(), answer, page)


@pytest.mark.e2e
def test_unanswerable_question_abstains(client):
    response = client.post("/v1/query", json={"question": UNANSWERABLE, "max_new_tokens": TOKENS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["abstained"], body
    assert body["reason"]
    assert body["citations"] == [], body  # no sources; the nearest passages come as such
    assert body["nearest"], body
    assert all(set(c) == {"document", "pages", "snippet", "score", "chunk_id"} for c in body["nearest"])


@pytest.mark.e2e
def test_query_stream_sends_tokens_then_final_then_done(client):
    question, answer, page, document = ANSWERABLE
    response = client.post(
        "/v1/query", json={"question": question, "stream": True, "top_k": TOP_K, "max_new_tokens": TOKENS}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[-2:] == ["final", "done"], names
    assert names[:-2] and set(names[:-2]) == {"token"}, names
    final = events[-2][1]
    assert set(final) == {
        "answer", "abstained", "reason", "citations", "nearest", "quotes", "confidence", "form", "unquoted_figures",
        "calculation", "calculation_refused", "support", "relevance", "timings", "usage",
    }
    assert final["calculation"] is None and final["calculation_refused"] is None  # not asked for one
    assert final["unquoted_figures"] == []  # the span "Charles Porter" states no figure
    assert final["usage"]["completion_tokens"] > 0
    assert_answered(final, answer, page, document)
    tokens = "".join(data["text"] for name, data in events if name == "token")
    # The deltas are the clean answer (no "Answer:" label, no [n] markers): they join to the final answer.
    assert tokens == final["answer"], (tokens, final["answer"])


# ---------------------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"question": ""}, "question"),
        ({"question": "   \n\t"}, "question"),
        ({"question": "x" * 2001}, "question"),
        ({"question": "q" * 100_000}, "question"),
        ({"question": 42}, "question"),
        ({"question": ["What", "is"]}, "question"),
        ({"question": None}, "question"),
        ({}, "question"),
        ({"question": "Who?", "top_k": 0}, "top_k"),
        ({"question": "Who?", "top_k": 10_000}, "top_k"),
        ({"question": "Who?", "top_k": "5"}, "top_k"),
        ({"question": "Who?", "top_k": 2.5}, "top_k"),
        ({"question": "Who?", "max_new_tokens": 0}, "max_new_tokens"),
        ({"question": "Who?", "max_new_tokens": 100_000}, "max_new_tokens"),
        ({"question": "Who?", "stream": "yes"}, "stream"),
        ({"question": "Who?", "topk": 3}, "topk"),
    ],
)
def test_bad_query_is_422_naming_the_field(client, body, field):
    response = client.post("/v1/query", json=body)
    assert response.status_code == 422, response.text
    assert any(error["loc"][-1] == field for error in response.json()["detail"]), response.json()


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b"{not json", {"content-type": "application/json"}),
        (b"", {"content-type": "application/json"}),
        (None, {}),
        (b'["a list"]', {"content-type": "application/json"}),
        (b"question=hi", {"content-type": "application/x-www-form-urlencoded"}),
    ],
)
def test_malformed_body_is_4xx_naming_the_body(client, content, headers):
    response = client.post("/v1/query", content=content, headers=headers)
    assert response.status_code == 422, response.text
    assert all(error["loc"][0] == "body" for error in response.json()["detail"])


def test_oversized_body_is_413(client):
    response = client.post("/v1/query", content=b'{"question": "' + b"x" * 2_000_000 + b'"}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_query_against_the_wrong_method_or_path(client):
    assert client.get("/v1/query").status_code == 405
    assert client.post("/v1/nothing", json={}).status_code == 404


# -------------------------------------------------------------------------------------------------- auth


def test_api_key_guards_every_route_but_healthz(runtime):
    settings = runtime.settings.with_overrides({"api": {"api_key": "s3cret-key"}})
    with TestClient(create_app(settings, runtime=runtime)) as client:
        assert client.get("/healthz").status_code == 200
        for method, path, body in [
            ("GET", "/readyz", None), ("GET", "/v1/documents", None),
            ("POST", "/v1/query", {"question": ANSWERABLE[0]}),
            ("POST", "/v1/chat/completions", {"model": "x", "messages": [{"role": "user", "content": "hi"}]}),
        ]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0LWtleQ=="},
                            {"Authorization": "Bearer s3cret-key-and-more"}):
                response = client.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (path, headers, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
        good = {"Authorization": "Bearer s3cret-key"}
        assert client.get("/readyz", headers=good).status_code == 200
        assert client.get("/v1/documents", headers=good).status_code == 200
        # The key is checked before the body: a wrong key with a bad body is still 401.
        assert client.post("/v1/query", json={"question": ""}).status_code == 401
        assert client.post("/v1/query", json={"question": ""}, headers=good).status_code == 422


def test_no_api_key_configured_means_open(client):
    assert client.get("/v1/documents", headers={"Authorization": "Bearer anything"}).status_code == 200


# ----------------------------------------------------------------------------------------------- overload

ON_TOPIC = "What religion were the Normans?"  # clears the relevance gate, so it reaches the generator


@contextmanager
def parked_generator_client(
    runtime, queue_size: int, request_timeout_s: float = 60.0, row_seconds: float = 2.0,
) -> Iterator[TestClient]:
    """A client whose answer service runs on a BatchingGenerator of its own (other batching limits, swapped in
    through ``dependency_overrides``) that already holds one parked job: its worker waits a minute to fill a
    batch of ``queue_size + 1``, so nothing is generated while the test runs. ``row_seconds`` is the batcher's
    cost estimate per batch row (admission control), before anything is measured: the one thing
    ``runtime.derive`` cannot set, so the batcher and its answer service are built here."""
    settings = runtime.settings.with_overrides({"generation": {
        "queue_size": queue_size, "max_batch_size": queue_size + 1, "batch_wait_ms": 60_000,
        "request_timeout_s": request_timeout_s,
    }})
    batcher = BatchingGenerator(runtime.llm, settings.generation, initial_job_seconds=row_seconds)
    # The CTranslate2 generator prefers batches of one, which would run the parked job at once: park it anyway.
    batcher.max_batch_size = queue_size + 1
    batcher.start()
    answers = AnswerService(runtime.retriever, runtime.llm, batcher, settings, runtime.calibrator)
    parked: list[BaseException] = []

    def park() -> None:
        try:
            batcher.submit_sync(runtime.llm.render_chat([{"role": "user", "content": "hi"}]), 1, timeout_s=60)
        except BaseException as exc:  # Overloaded once the batcher stops: expected
            parked.append(exc)

    thread = threading.Thread(target=park, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while batcher.waiting < 1:
        assert time.monotonic() < deadline, "the parked job never reached the queue"
        time.sleep(0.01)
    app = create_app(runtime.settings, runtime=runtime)
    app.dependency_overrides[get_answers] = lambda: answers
    try:
        with TestClient(app) as client:
            yield client
    finally:
        batcher.stop()  # its own batcher only
        thread.join(timeout=5)
    assert batcher.batches_run == 0 and len(parked) == 1 and isinstance(parked[0], Overloaded)
    assert runtime.batcher.running


OVERLOAD_REQUESTS = [
    ("/v1/query", {"question": ON_TOPIC}),
    ("/v1/query", {"question": ON_TOPIC, "stream": True}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": ON_TOPIC}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": ON_TOPIC}], "stream": True}),
]


def test_full_generator_queue_is_503_with_retry_after(runtime):
    with parked_generator_client(runtime, queue_size=1) as client:
        for path, body in OVERLOAD_REQUESTS:
            started = time.monotonic()
            response = client.post(path, json=body)
            assert time.monotonic() - started < 10, "an overloaded request must be refused at once, not queued"
            assert response.status_code == 503, (path, body, response.text)
            assert response.headers["content-type"].startswith("application/json")
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["detail"]


def test_request_that_cannot_start_within_its_time_limit_is_503_at_once(runtime):
    # One parked job ahead, estimated at 2 s a row: a request with 1.5 s in all cannot start in time.
    with parked_generator_client(runtime, queue_size=len(OVERLOAD_REQUESTS) + 1, request_timeout_s=1.5) as client:
        for path, body in OVERLOAD_REQUESTS:
            started = time.monotonic()
            response = client.post(path, json=body)
            assert time.monotonic() - started < 10, "refused at once, not queued"
            assert response.status_code == 503, (path, body, response.text)  # not a 504 after 1.5 s of waiting
            assert int(response.headers["retry-after"]) >= 1 and "busy" in response.json()["detail"]


def test_request_that_waits_past_its_time_limit_is_504(runtime):
    # An estimate far too low (as before anything is measured) admits requests that then wait too long.
    with parked_generator_client(
        runtime, queue_size=len(OVERLOAD_REQUESTS) + 1, request_timeout_s=0.5, row_seconds=0.01,
    ) as client:
        for path, body in OVERLOAD_REQUESTS:
            started = time.monotonic()
            response = client.post(path, json=body)
            assert time.monotonic() - started < 10
            assert response.status_code == 504, (path, body, response.text)
            assert "time" in response.json()["detail"]


def test_unexpected_error_is_500_with_json_detail_and_logged(runtime, caplog):
    class Broken:
        async def answer(self, *args, **kwargs):
            raise ZeroDivisionError("bug")

    app = create_app(runtime.settings, runtime=runtime)
    app.dependency_overrides[get_answers] = Broken
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/v1/query", json={"question": ON_TOPIC})
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


def test_error_after_the_stream_started_is_an_error_event(runtime):
    class FailsMidway:
        async def stream(self, *args, **kwargs):
            yield "Cath"
            raise GenerationTimeout("the stream did not finish within its time limit")

    app = create_app(runtime.settings, runtime=runtime)
    app.dependency_overrides[get_answers] = FailsMidway
    with TestClient(app) as client:
        response = client.post("/v1/query", json={"question": ON_TOPIC, "stream": True})
        assert response.status_code == 200
        assert sse_events(response.text) == [
            ("token", {"text": "Cath"}), ("error", {"detail": "the stream did not finish within its time limit"}),
        ]
        body = {"messages": [{"role": "user", "content": "q"}], "stream": True}
        chat = client.post("/v1/chat/completions", json=body)
        assert chat.status_code == 200
        last = json.loads(chat.text.strip().split("\n\n")[-1].removeprefix("data: "))
        assert last == {"error": {"message": "the stream did not finish within its time limit", "type": "server_error"}}
