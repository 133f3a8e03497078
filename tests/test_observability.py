"""Operations: Prometheus metrics after real questions, X-Request-ID in and out, one JSON log line per question,
and every command's --help stating its exit codes."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.logs import JsonFormatter, configure_logging
from api.observe import REQUEST_ID_HEADER
from tests.conftest import REPO, SAMPLE_DOCS
from tests.test_api import ANSWERABLE, TOP_K, UNANSWERABLE

TOKENS = 24


@pytest.fixture(scope="module")
def app(runtime):
    return create_app(runtime.settings, runtime=runtime)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as client:
        yield client


def samples(client: TestClient) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics as {(name, labels): value}."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text) for s in family.samples
    }


def value(samples_: dict, name: str, **labels: str) -> float:
    return samples_.get((name, frozenset(labels.items())), 0.0)



class _Capture(logging.Handler):
    """The JSON lines the rag.questions logger writes, as rag-serve --log-format json would print them."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def question_lines():
    logger = logging.getLogger("rag.questions")
    capture = _Capture()
    logger.addHandler(capture)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield capture.lines
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)


@pytest.mark.e2e
def test_a_question_moves_the_metrics_and_logs_one_json_line(client, question_lines):
    before = samples(client)
    question, _, _, document = ANSWERABLE
    response = client.post(
        "/v1/query", json={"question": question, "top_k": TOP_K, "max_new_tokens": TOKENS},
        headers={REQUEST_ID_HEADER: "trace-42.a"},
    )
    assert response.status_code == 200, response.text
    assert response.headers[REQUEST_ID_HEADER] == "trace-42.a"
    body = response.json()
    after = samples(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    verdict = "abstained" if body["abstained"] else "answered"
    assert moved("rag_questions_total", collection="default", verdict=verdict) == 1
    assert moved("rag_http_requests_total", route="/v1/query", method="POST", status="200") == 1
    assert moved("rag_http_request_duration_seconds_count", route="/v1/query", method="POST") == 1
    for stage in ("retrieve", "evidence", "generate", "total"):
        assert moved("rag_answer_stage_seconds_count", stage=stage) == 1, stage
    assert moved("rag_answer_stage_seconds_sum", stage="total") == pytest.approx(body["timings"]["total_s"], abs=1e-6)
    assert moved("rag_answer_confidence_count") == 1
    assert moved("rag_tokens_total", kind="completion") == body["usage"]["completion_tokens"] > 0
    assert moved("rag_tokens_total", kind="prompt") == body["usage"]["prompt_tokens"] > 0
    assert ("rag_generator_queue_depth", frozenset()) in after

    lines = [json.loads(line) for line in question_lines]
    assert len(lines) == 1, question_lines
    line = lines[0]
    assert line["event"] == "question" and line["logger"] == "rag.questions"
    assert line["request_id"] == "trace-42.a" and line["collection"] == "default"
    assert line["verdict"] == verdict and line["confidence"] == pytest.approx(body["confidence"], abs=1e-4)
    assert line["latency_s"] == pytest.approx(body["timings"]["total_s"], abs=1e-3)
    assert line["prompt_tokens"] == body["usage"]["prompt_tokens"]
    assert line["completion_tokens"] == body["usage"]["completion_tokens"]
    assert line["cited_documents"] == ([] if body["abstained"] else [document])


def test_an_abstention_before_generation_is_counted_and_logged(client, question_lines):
    before = samples(client)
    response = client.post("/v1/query", json={"question": UNANSWERABLE, "top_k": TOP_K, "stream": True})
    assert response.status_code == 200, response.text
    after = samples(client)
    assert (value(after, "rag_questions_total", collection="default", verdict="abstained")
            - value(before, "rag_questions_total", collection="default", verdict="abstained")) == 1
    line = json.loads(question_lines[-1])
    assert line["verdict"] == "abstained" and line["cited_documents"] == [] and line["reason"]
    assert line["request_id"] == response.headers[REQUEST_ID_HEADER]


def test_request_id_generated_and_echoed_on_errors(client):
    generated = client.get("/readyz").headers[REQUEST_ID_HEADER]
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert client.get("/readyz").headers[REQUEST_ID_HEADER] != generated  # one per request
    bad = client.post("/v1/query", json={"question": ""}, headers={REQUEST_ID_HEADER: "abc-123"})
    assert bad.status_code == 422 and bad.headers[REQUEST_ID_HEADER] == "abc-123"
    missing = client.get("/nowhere", headers={REQUEST_ID_HEADER: "abc-124"})
    assert missing.status_code == 404 and missing.headers[REQUEST_ID_HEADER] == "abc-124"


@pytest.mark.parametrize("given", ["", "has space", "x" * 200, "ünïcode", "a\tb", "-leading-dash"])
def test_an_insane_request_id_is_replaced(client, given):
    echoed = client.get("/healthz", headers={REQUEST_ID_HEADER: given.encode("utf-8")}).headers[REQUEST_ID_HEADER]
    assert echoed != given and len(echoed) == 32


def test_request_id_on_a_500(runtime):
    app = create_app(runtime.settings, runtime=runtime)

    @app.get("/boom")
    def boom():
        raise RuntimeError("boom")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={REQUEST_ID_HEADER: "boom-1"})
    assert response.status_code == 500 and response.headers[REQUEST_ID_HEADER] == "boom-1"
    assert 'rag_http_requests_total{method="GET",route="/boom",status="500"} 1.0' in \
        TestClient(app).get("/metrics").text


def test_unmatched_paths_share_one_label(client):
    client.get("/no/such/path/1")
    client.get("/no/such/path/2")
    text = client.get("/metrics").text
    assert 'route="unmatched"' in text and "/no/such/path" not in text


def test_metrics_need_the_key_unless_public(runtime):
    keyed = runtime.settings.with_overrides({"api": {"api_key": "k"}})
    with TestClient(create_app(keyed, runtime=runtime)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
    public = keyed.with_overrides({"api": {"public_metrics": True}})
    with TestClient(create_app(public, runtime=runtime)) as client:
        assert client.get("/metrics").status_code == 200
        assert client.post("/v1/query", json={"question": "x"}).status_code == 401


def test_apps_count_apart(runtime, client):
    other = TestClient(create_app(runtime.settings, runtime=runtime))
    other.get("/healthz")
    other.get("/healthz")
    text = other.get("/metrics").text
    assert 'rag_http_requests_total{method="GET",route="/healthz",status="200"} 2.0' in text


def test_uploads_count_documents_chunks_and_failures(runtime, tmp_path):
    settings = runtime.settings.with_overrides({"index": {"path": tmp_path / "index"}})
    derived = runtime.derive({"index": {"path": tmp_path / "index"}})
    try:
        with TestClient(create_app(settings, runtime=derived)) as client:
            pdf = (SAMPLE_DOCS / "Normans.pdf").read_bytes()
            created = client.post("/v1/documents", files={"file": ("n.pdf", pdf, "application/pdf")})
            assert created.status_code == 201, created.text
            refused = client.post("/v1/documents", files={"file": ("n.txt", b"hello", "text/plain")})
            assert refused.status_code == 415
            found = samples(client)
    finally:
        derived.close()
    assert value(found, "rag_ingest_documents_total", status="new") == 1
    assert value(found, "rag_ingest_chunks_total") == created.json()["chunks"] > 0
    assert value(found, "rag_ingest_failures_total") == 1


def test_json_log_format_writes_one_object_per_line():
    stream = io.StringIO()
    configure_logging("info", "json")
    root = logging.getLogger()
    try:
        root.handlers[0].setStream(stream)
        logging.getLogger("rag.test").info("hello %s", "world", extra={"fields": {"verdict": "answered"}})
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("rag.test").exception("failed")
    finally:
        root.handlers.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["message"] == "hello world" and lines[0]["verdict"] == "answered" and lines[0]["level"] == "INFO"
    assert lines[1]["level"] == "ERROR" and "ValueError: bad" in lines[1]["exc_info"]
    assert len(lines) == 2  # the traceback stays inside its line


COMMANDS = [
    ["-m", "api.main"], ["-m", "ingest.cli"], ["-m", "api.ask"], ["-m", "evals.cli"],
    ["-m", "bench.openai_server"], ["-m", "bench.naive_server"], ["-m", "bench.serve"], ["-m", "bench.ingest"],
    ["-m", "bench.search"], ["-m", "bench.burst"], ["-m", "evals.calibrate"], ["-m", "evals.choose_thresholds"],
    ["-m", "evals.ci_sample"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[-1])
def test_every_command_help_states_its_exit_codes(command):
    done = subprocess.run([sys.executable, *command, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "exit codes" in done.stdout.lower() and "0 " in done.stdout, done.stdout[-800:]
