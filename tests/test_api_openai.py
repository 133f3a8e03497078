"""The OpenAI-compatible endpoint, driven by the official ``openai`` client against the app served by uvicorn
on 127.0.0.1 (a free port, a background thread, bounded waits)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import openai
import pytest
import uvicorn
from fastapi.testclient import TestClient

from api.app import create_app

QUESTION = "What company developed the most successful steam engine indicator?"  # squad2-dev: Steam_engine.pdf p. 3
TOKENS = 32
TOP_K = 3


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(app) -> Iterator[str]:
    """``app`` served by uvicorn on 127.0.0.1 in a thread; yields the OpenAI base URL; stops it (bounded)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start within 30 s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{server.config.port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    assert not thread.is_alive(), "uvicorn did not stop within 15 s"


@pytest.fixture(scope="module")
def base_url(runtime):
    with serve(create_app(runtime.settings, runtime=runtime)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)


def cites_page(citations: list[dict], document: str, page: int) -> bool:
    return any(c["document"] == document and c["pages"][0] <= page <= c["pages"][1] for c in citations)


@pytest.mark.e2e
def test_openai_client_non_streaming(client):
    completion = client.chat.completions.create(
        model="rag",  # the name before collections: the default collection
        messages=[
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Who were the Normans?"},
            {"role": "assistant", "content": "A people of northern France."},
            {"role": "user", "content": QUESTION},
        ],
        max_tokens=TOKENS,
        extra_body={"top_k": TOP_K},
    )
    assert completion.object == "chat.completion"
    assert completion.model == "rag"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    extra = completion.model_extra
    assert not extra["rag"]["abstained"], extra["rag"]
    assert "Porter" in completion.choices[0].message.content
    assert completion.choices[0].message.content == extra["rag"]["answer"]
    assert cites_page(extra["citations"], "Steam_engine.pdf", 3), extra["citations"]
    usage = completion.usage  # the question was answered, so it was generated: real token counts
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.e2e
def test_openai_client_streaming(client):
    stream = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": QUESTION}], max_tokens=TOKENS, stream=True,
        extra_body={"top_k": TOP_K},
    )
    chunks = list(stream)
    assert len(chunks) >= 3
    assert all(c.object == "chat.completion.chunk" and c.model == "default" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    rag = last.model_extra["rag"]
    assert not rag["abstained"], rag
    assert "Porter" in content, content
    assert cites_page(last.model_extra["citations"], "Steam_engine.pdf", 3), last.model_extra["citations"]


def test_openai_client_sees_validation_errors(client):
    with pytest.raises(openai.UnprocessableEntityError) as error:
        client.chat.completions.create(model="x", messages=[{"role": "system", "content": "no question here"}])
    assert "messages" in str(error.value) and "user message" in str(error.value)
    with pytest.raises(openai.UnprocessableEntityError) as error:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}], max_tokens=10**6)
    assert "max_tokens" in str(error.value)


def test_openai_client_with_api_key(runtime):
    """The client's api_key is the Bearer token the service checks."""
    settings = runtime.settings.with_overrides({"api": {"api_key": "sk-local"}})
    no_question = [{"role": "system", "content": "no question here"}]  # passes auth, then fails validation
    with serve(create_app(settings, runtime=runtime)) as url:
        wrong = openai.OpenAI(base_url=url, api_key="sk-wrong", max_retries=0, timeout=30)
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model="x", messages=no_question)
        right = openai.OpenAI(base_url=url, api_key="sk-local", max_retries=0, timeout=30)
        with pytest.raises(openai.UnprocessableEntityError):
            right.chat.completions.create(model="x", messages=no_question)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "x"},
        {"model": "x", "messages": []},
        {"model": "x", "messages": "hello"},
        {"model": "x", "messages": [{"role": "user"}]},
        {"model": "x", "messages": [{"role": "user", "content": "   "}]},
        {"model": "x", "messages": [{"role": "wizard", "content": "hi"}]},
        {"model": "x", "messages": [{"role": "user", "content": "x" * 5000}]},
        {"model": 7, "messages": [{"role": "user", "content": "hi"}]},
        {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "9"},
        # both caps are bounded by the schema, not only the one that applies (max_completion_tokens wins)
        {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 1,
         "max_tokens": 10**6},
    ],
)
def test_bad_chat_requests_are_422(runtime, body):
    with TestClient(create_app(runtime.settings, runtime=runtime)) as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "body"
