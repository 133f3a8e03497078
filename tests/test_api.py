"""The HTTP API over the real pipeline: the session Runtime (real embedder, index and generator) behind
``create_app(settings, runtime=...)``, exercised with FastAPI's TestClient.

Tests marked e2e generate text (kept to a few dozen tokens: this CPU makes ~15-30 tokens/s).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from rag.answering.service import AnswerService
from rag.answering.batching import BatchingGenerator, GenerationTimeout, Overloaded
from rag.runtime import Runtime, make_ingestor
from rag.indexing.index import DocumentIndex, IndexBusy
from rag.answering.retrieval import HybridRetriever
from tests import pdf_factory
from tests.conftest import eval_set, make_settings

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
    empty = Runtime(make_settings(tmp_path / "index"))
    empty.index = DocumentIndex.open(empty.settings.index.path, empty.settings.index, create=True)
    empty.answers = runtime.answers
    try:
        with TestClient(create_app(empty.settings, runtime=empty)) as client:
            response = client.get("/readyz")
            assert client.get("/healthz").status_code == 200
    finally:
        empty.index.close()
    assert response.status_code == 503
    assert "no chunks" in response.json()["detail"]


def test_list_documents(client):
    response = client.get("/v1/documents")
    assert response.status_code == 200
    docs = {d["document"]: d for d in response.json()}
    assert set(docs) == {"Normans.pdf", "Steam_engine.pdf"}
    normans = docs["Normans.pdf"]
    assert normans["collection"] == "folder" and normans["pages"] >= 6 and normans["chunks"] > 0
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
    assert body["support"] is not None and body["relevance"] is not None
    assert body["timings"]["total_s"] > 0
    assert set(body["citations"][0]) == {"document", "pages", "snippet", "score", "chunk_id"}


@pytest.mark.e2e
@pytest.mark.xfail(
    strict=True,
    reason="pipeline: the gold passage (Normans.pdf p. 6, '...off the Atlantic coast of Africa') ranks first, but "
    "its cosine similarity 0.287 is below retrieval.min_relevance 0.60, so the relevance gate abstains",
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
    assert set(final) == {"answer", "abstained", "reason", "citations", "support", "relevance", "timings", "usage"}
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
    settings = runtime.settings.model_copy(deep=True)
    settings.api.api_key = "s3cret-key"
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


# ------------------------------------------------------------------------------------------------ uploads


@pytest.fixture(scope="module")
def upload_runtime(runtime, tmp_path_factory):
    """A Runtime over a fresh, empty index that shares the session's loaded models (so uploads here leave the
    session index alone). Not closed as a whole: its generator and batcher belong to ``runtime``."""
    settings = make_settings(tmp_path_factory.mktemp("upload_index") / "index")
    rt = Runtime(settings)
    rt.index = DocumentIndex.open(settings.index.path, settings.index, create=True)
    rt.embedder = runtime.embedder
    rt.ingestor = make_ingestor(settings, runtime.embedder, runtime.ingestor.tokenizer_path)
    rt.retriever = HybridRetriever(rt.index, runtime.embedder, settings.retrieval).load()
    rt.llm, rt.batcher = runtime.llm, runtime.batcher
    rt.answers = AnswerService(rt.retriever, runtime.llm, runtime.batcher, runtime.answers.verifier, settings)
    yield rt
    rt.index.close()


@pytest.fixture(scope="module")
def upload_client(upload_runtime):
    with TestClient(create_app(upload_runtime.settings, runtime=upload_runtime)) as client:
        yield client


def uploads_dir(rt: Runtime) -> Path:
    return rt.settings.index.path / "uploads"


def post_pdf(client: TestClient, name: str, data: bytes, content_type: str = "application/pdf"):
    return client.post("/v1/documents", files={"file": (name, data, content_type)})


def test_upload_rejects_a_file_that_is_not_a_pdf(upload_client, upload_runtime, tmp_path):
    response = post_pdf(upload_client, "notes.txt", b"just text", "text/plain")
    assert response.status_code == 415
    assert "PDF" in response.json()["detail"]

    fake = pdf_factory.not_a_pdf(tmp_path / "fake.pdf").read_bytes()
    response = post_pdf(upload_client, "fake.pdf", fake)
    assert response.status_code == 422
    assert "not a PDF" in response.json()["detail"]
    assert not (uploads_dir(upload_runtime) / "fake.pdf").exists()


def test_upload_of_a_corrupt_pdf_is_422_with_the_reason_and_leaves_nothing(upload_client, upload_runtime, tmp_path):
    source = eval_set("squad2-dev") / "docs" / "Normans.pdf"
    broken = pdf_factory.truncated_pdf(tmp_path / "broken.pdf", source).read_bytes()
    response = post_pdf(upload_client, "broken.pdf", broken)
    assert response.status_code == 422, response.text
    assert "corrupt" in response.json()["detail"] or "truncated" in response.json()["detail"]
    assert not (uploads_dir(upload_runtime) / "broken.pdf").exists()
    assert not list(uploads_dir(upload_runtime).glob(".*.part"))
    assert "uploads/broken.pdf" not in upload_runtime.index.store.documents()


@pytest.mark.parametrize("name", ["bad|name.pdf", "semi;colon.pdf", ".hidden.pdf", "caf\u00e9.pdf"])
def test_upload_rejects_unsafe_file_names(upload_client, name):
    response = post_pdf(upload_client, name, b"%PDF-1.4\n")
    assert response.status_code == 422, response.text
    assert "file name" in response.json()["detail"]


def test_upload_without_a_file_is_422(upload_client):
    response = upload_client.post("/v1/documents", data={"other": "x"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]


def test_upload_path_traversal_name_is_stored_under_uploads(upload_client, upload_runtime, tmp_path):
    pdf = pdf_factory.text_pdf(tmp_path / "source.pdf", ["The lighthouse keeper of Brindlemoor is Oswin Tarrant."])
    response = post_pdf(upload_client, "../../etc/x.pdf", pdf.read_bytes())
    assert response.status_code == 201, response.text
    assert response.json()["document"] == "uploads/x.pdf"
    stored = uploads_dir(upload_runtime) / "x.pdf"
    assert stored.read_bytes() == pdf.read_bytes()
    root = upload_runtime.settings.index.path.parents[1]
    assert [p for p in root.rglob("x.pdf")] == [stored]
    assert not list(uploads_dir(upload_runtime).glob(".*.part"))


def test_oversized_upload_is_413(upload_runtime):
    settings = upload_runtime.settings.model_copy(deep=True)
    settings.api.max_upload_mb = 0.02  # about 20 KB
    source = eval_set("squad2-dev") / "docs" / "Harvard_University.pdf"  # about 50 KB
    with TestClient(create_app(settings, runtime=upload_runtime)) as client:
        response = post_pdf(client, "Harvard_University.pdf", source.read_bytes())
        assert response.status_code == 413
        assert "limit" in response.json()["detail"]
        # Far above the limit, the body is refused before it is read.
        huge = client.post("/v1/documents", files={"file": ("big.pdf", b"%PDF-" + b"0" * 500_000, "application/pdf")})
        assert huge.status_code == 413
    assert not (uploads_dir(upload_runtime) / "Harvard_University.pdf").exists()


def test_upload_while_the_index_is_busy_is_409(upload_client, upload_runtime, monkeypatch, tmp_path):
    """index.writing(wait=True) blocks rather than raising, so a busy index is simulated here."""
    def busy(wait: bool = False):
        raise IndexBusy("another process is writing to the index; try again later")

    monkeypatch.setattr(upload_runtime.index, "writing", busy)
    pdf = pdf_factory.text_pdf(tmp_path / "busy.pdf", ["Some text."])
    response = post_pdf(upload_client, "busy.pdf", pdf.read_bytes())
    assert response.status_code == 409
    assert "try again" in response.json()["detail"]
    assert not (uploads_dir(upload_runtime) / "busy.pdf").exists()


@pytest.mark.e2e
def test_upload_a_real_pdf_then_list_and_query_it(upload_client, upload_runtime, tmp_path):
    source = eval_set("squad2-dev") / "docs" / "Harvard_University.pdf"
    copy = shutil.copy(source, tmp_path / "Harvard_University.pdf")
    data = Path(copy).read_bytes()
    response = post_pdf(upload_client, "Harvard_University.pdf", data)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["document"] == "uploads/Harvard_University.pdf"
    assert body["pages"] >= 7 and body["chunks"] > 0 and body["status"] == "new"

    again = post_pdf(upload_client, "Harvard_University.pdf", data)
    assert again.status_code == 201 and again.json()["status"] == "unchanged"

    listed = {d["document"]: d for d in upload_client.get("/v1/documents").json()}
    assert listed["uploads/Harvard_University.pdf"]["collection"] == "upload"
    assert listed["uploads/Harvard_University.pdf"]["chunks"] == body["chunks"]

    query = {"question": "When was the color crimson adopted at Harvard as official color?", "top_k": TOP_K,
             "max_new_tokens": 16}
    answer = upload_client.post("/v1/query", json=query)
    assert answer.status_code == 200, answer.text
    citations = answer.json()["citations"]
    assert citations and all(c["document"] == "uploads/Harvard_University.pdf" for c in citations)
    assert cites_page(citations, "uploads/Harvard_University.pdf", 3), answer.json()


# ----------------------------------------------------------------------------------------------- overload

ON_TOPIC = "What religion were the Normans?"  # clears the relevance gate, so it reaches the generator


@contextmanager
def parked_generator_client(
    runtime, queue_size: int, request_timeout_s: float = 60.0, row_seconds: float = 2.0,
) -> Iterator[TestClient]:
    """A client of an app whose real BatchingGenerator already holds one parked job: its worker waits a
    minute to fill a batch of ``queue_size + 1``, so nothing is generated while the test runs. ``row_seconds``
    is the batcher's cost estimate per batch row (admission control), before anything is measured."""
    settings = runtime.settings.model_copy(deep=True)
    settings.generation.queue_size, settings.generation.max_batch_size = queue_size, queue_size + 1
    settings.generation.batch_wait_ms = 60_000
    settings.generation.request_timeout_s = request_timeout_s
    batcher = BatchingGenerator(runtime.llm, settings.generation, initial_row_seconds=row_seconds).start()
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
    rt = Runtime(settings)
    rt.index, rt.retriever, rt.llm, rt.batcher = runtime.index, runtime.retriever, runtime.llm, batcher
    rt.answers = AnswerService(runtime.retriever, runtime.llm, batcher, runtime.answers.verifier, settings)
    try:
        with TestClient(create_app(settings, runtime=rt)) as client:
            yield client
    finally:
        batcher.stop()
        thread.join(timeout=5)
    assert batcher.batches_run == 0 and len(parked) == 1 and isinstance(parked[0], Overloaded)


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
    rt = Runtime(runtime.settings)
    rt.index = runtime.index

    class Broken:
        async def answer(self, *args, **kwargs):
            raise ZeroDivisionError("bug")

    rt.answers = Broken()
    with TestClient(create_app(runtime.settings, runtime=rt), raise_server_exceptions=False) as client:
        response = client.post("/v1/query", json={"question": ON_TOPIC})
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


def test_error_after_the_stream_started_is_an_error_event(runtime):
    rt = Runtime(runtime.settings)
    rt.index = runtime.index

    class FailsMidway:
        async def stream(self, *args, **kwargs):
            yield "Cath"
            raise GenerationTimeout("the stream did not finish within its time limit")

    rt.answers = FailsMidway()
    with TestClient(create_app(runtime.settings, runtime=rt)) as client:
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
