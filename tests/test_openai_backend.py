"""generation.backend = "openai": the answer service generating through a real OpenAI-compatible server.

The server is bench.openai_server over the session's real 0.5B generator, started with uvicorn on a free port in
this process; the service under test talks to it over HTTP like it would to vLLM or Ollama. A server that ignores
``logprobs`` (``--no-logprobs``), a port where nobody listens and a socket that accepts and never answers stand in
for the failures an operator meets.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import get_answers
from bench.openai_server import create_openai_app
from rag.generation.batching import BatchingGenerator
from rag.generation.openai_client import OpenAIChatGenerator, parse_prompt, render_messages
from rag.answering.prompting import REPLY_PREFIX
from rag.answering.service import AnswerService
from rag.runtime import Runtime
from tests.test_api import ANSWERABLE, TOP_K, cites_page, sse_events

TOKENS = 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(app) -> Iterator[str]:
    """``app`` under a real uvicorn on a free loopback port; yields its OpenAI base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def torch_llm(runtime):
    """The session's model through transformers: the stand-in server decodes token by token with top
    alternatives, which needs the model itself (the runtime's own generator may be the int8 engine)."""
    from rag.answering.prompting import MARKER_WORDS
    from rag.generation.backends import BACKENDS

    from rag.settings import SMALL_GENERATOR

    # The small model: this server decodes token by token in float32 PyTorch, 3x faster with it
    return BACKENDS["transformers"](runtime.settings.with_overrides({"models": {"generator": SMALL_GENERATOR}}), MARKER_WORDS)


@pytest.fixture(scope="module")
def server_url(torch_llm) -> Iterator[str]:
    with serve(create_openai_app(torch_llm)) as url:
        yield url


@pytest.fixture(scope="module")
def server_without_logprobs(torch_llm) -> Iterator[str]:
    with serve(create_openai_app(torch_llm, logprobs=False)) as url:
        yield url


def remote_settings(runtime, url: str, **openai):
    return runtime.settings.with_overrides(
        {"generation": {"backend": "openai", "openai": {"base_url": url, "model": "rag-generator", **openai}}}
    )


@pytest.fixture(scope="module")
def remote(runtime, server_url, embedder) -> Iterator[Runtime]:
    """A Runtime whose generator is the OpenAI-compatible server (built through generation.backend)."""
    with Runtime(remote_settings(runtime, server_url), embedder=embedder).start() as rt:
        yield rt


@pytest.fixture(scope="module")
def remote_client(remote) -> Iterator[TestClient]:
    with TestClient(create_app(remote.settings, runtime=remote)) as client:
        yield client


@contextmanager
def service_over(runtime, settings) -> Iterator[AnswerService]:
    """An AnswerService over ``runtime``'s retriever generating through ``settings.generation.openai``."""
    generator = OpenAIChatGenerator(settings.generation, probe_words=("NOT",)).load()
    batcher = BatchingGenerator(generator, settings.generation).start()
    try:
        yield AnswerService(runtime.retriever, generator, batcher, settings, runtime.answers.calibrator)
    finally:
        batcher.stop()
        generator.close()


def test_prompt_wire_form_round_trips():
    messages = [{"role": "system", "content": "rules"}, {"role": "user", "content": 'a "quoted" Ünicode [1]'}]
    assert parse_prompt(render_messages(messages) + REPLY_PREFIX) == (messages, REPLY_PREFIX)
    assert parse_prompt("plain text") == ([{"role": "user", "content": "plain text"}], "")


def test_settings_refuse_openai_backend_without_url(runtime):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="base_url"):
        runtime.settings.with_overrides({"generation": {"backend": "openai"}})


@pytest.mark.e2e
def test_the_runtime_builds_the_remote_backend(remote):
    assert isinstance(remote.llm, OpenAIChatGenerator)


@pytest.mark.e2e
def test_grounded_answer_through_the_server_json(remote_client):
    question, gold, page, document = ANSWERABLE
    response = remote_client.post("/v1/query", json={"question": question, "top_k": TOP_K, "max_new_tokens": TOKENS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert not body["abstained"], body
    assert gold in body["answer"], body
    assert cites_page(body["citations"], document, page), body["citations"]
    assert body["usage"]["completion_tokens"] > 0 and body["usage"]["prompt_tokens"] > 50  # the server's counts


@pytest.mark.e2e
def test_grounded_answer_through_the_server_streamed(remote_client):
    question, gold, page, document = ANSWERABLE
    response = remote_client.post(
        "/v1/query", json={"question": question, "top_k": TOP_K, "max_new_tokens": TOKENS, "stream": True}
    )
    assert response.status_code == 200, response.text
    events = sse_events(response.text)
    tokens = "".join(data["text"] for name, data in events if name == "token")
    final = next(data for name, data in events if name == "final")
    assert gold in tokens and gold in final["answer"], events
    assert cites_page(final["citations"], document, page), final["citations"]
    assert events[-1][0] == "done"


@pytest.mark.e2e
def test_logprobs_flow_into_the_confidence_features(remote):
    question = ANSWERABLE[0]
    answer = asyncio.run(remote.answers.answer(question, TOP_K, TOKENS))
    assert "logprobs_available" not in answer.features
    assert answer.features["mean_logprob"] < 0 and answer.features["min_logprob"] < 0, answer.features
    assert answer.features["probe_logit"] != 0.0  # the first answer token's alternatives were read
    # and the raw result: one log-probability per completion token, the prefill stripped from the text
    prompt = remote.llm.render_chat([{"role": "user", "content": "Say yes."}]) + REPLY_PREFIX
    result = remote.llm.generate_batch([prompt], 8)[0]
    assert result.logprobs_available and len(result.token_logprobs) >= 1
    assert all(lp <= 0 for lp in result.token_logprobs)
    assert not result.text.lower().lstrip().startswith("answer:")


@pytest.mark.e2e
def test_a_server_without_logprobs_is_answered_and_marked(runtime, server_without_logprobs):
    settings = remote_settings(runtime, server_without_logprobs)
    with service_over(runtime, settings) as answers:
        answer = asyncio.run(answers.answer(ANSWERABLE[0], TOP_K, TOKENS))
    assert ANSWERABLE[1] in answer.text or answer.abstained  # answered (or abstained), never a crash
    assert answer.features["logprobs_available"] == 0.0
    assert answer.confidence is not None and 0.0 <= answer.confidence <= 1.0


def query_over(runtime, settings, stream: bool):
    """POST /v1/query to an app whose answers generate through ``settings``' server; the response and seconds."""
    with service_over(runtime, settings) as answers:
        app = create_app(settings, runtime=runtime)
        app.dependency_overrides[get_answers] = lambda: answers
        with TestClient(app) as client:
            started = time.monotonic()
            response = client.post("/v1/query", json={"question": ANSWERABLE[0], "top_k": TOP_K, "stream": stream})
            return response, time.monotonic() - started


@pytest.mark.parametrize("stream", [False, True])
def test_a_dead_server_is_a_502_not_a_500(runtime, stream):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nobody listens there
    settings = remote_settings(runtime, url, connect_timeout_s=2)
    response, elapsed = query_over(runtime, settings, stream)
    assert response.status_code == 502, response.text
    assert url in response.json()["detail"]
    assert elapsed < 30


@pytest.mark.parametrize("stream", [False, True])
def test_a_silent_server_is_a_504_not_a_hang(runtime, stream):
    listener = socket.socket()  # accepts connections (the kernel does) and never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    settings = remote_settings(runtime, url, read_timeout_s=1.5)
    try:
        response, elapsed = query_over(runtime, settings, stream)
    finally:
        listener.close()
    assert response.status_code == 504, response.text
    assert "read_timeout_s" in response.json()["detail"]
    assert elapsed < 30


def test_server_rejects_bad_requests_with_400(server_url):
    response = httpx.post(server_url + "/chat/completions", json={"messages": "nope"}, timeout=10)
    assert response.status_code == 400
    assert httpx.get(server_url + "/models", timeout=10).json()["data"][0]["id"] == "rag-generator"
