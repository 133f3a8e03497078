"""Operations: Prometheus metrics after real questions, X-Request-ID in and out, one JSON log line per question,
and every command's --help stating its exit codes."""

from __future__ import annotations

import importlib
import io
import json
import logging

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.logs import JsonFormatter, configure_logging
from api.observe import REQUEST_ID_HEADER
from rag.settings import Settings
from tests.conftest import SAMPLE_DOCS
from tests.test_api import ANSWERABLE, TOP_K, UNANSWERABLE

TOKENS = 24


@pytest.fixture(scope="module")
def client(runtime):
    """The app over the session's real runtime."""
    with TestClient(create_app(runtime.settings, runtime=runtime)) as client:
        yield client


def bare_app(**api):
    """An app whose lifespan never runs (no models, no index): what the HTTP layer does on its own."""
    return create_app(Settings().with_overrides({"api": api}) if api else Settings())


@pytest.fixture(scope="module")
def bare():
    return TestClient(bare_app())


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


def test_request_id_generated_and_echoed_on_errors(bare):
    generated = bare.get("/healthz").headers[REQUEST_ID_HEADER]
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert bare.get("/healthz").headers[REQUEST_ID_HEADER] != generated  # one per request
    missing = bare.get("/nowhere", headers={REQUEST_ID_HEADER: "abc-124"})
    assert missing.status_code == 404 and missing.headers[REQUEST_ID_HEADER] == "abc-124"
    starting = bare.get("/readyz", headers={REQUEST_ID_HEADER: "abc-125"})  # no runtime: 503
    assert starting.status_code == 503 and starting.headers[REQUEST_ID_HEADER] == "abc-125"
    keyed = TestClient(bare_app(api_key="k"))
    refused = keyed.post("/v1/query", json={"question": "x"}, headers={REQUEST_ID_HEADER: "abc-126"})
    assert refused.status_code == 401 and refused.headers[REQUEST_ID_HEADER] == "abc-126"


@pytest.mark.e2e
def test_request_id_on_a_422(client):
    bad = client.post("/v1/query", json={"question": ""}, headers={REQUEST_ID_HEADER: "abc-123"})
    assert bad.status_code == 422 and bad.headers[REQUEST_ID_HEADER] == "abc-123"


@pytest.mark.parametrize("given", ["", "has space", "x" * 200, "ünïcode", "a\tb", "-leading-dash"])
def test_an_insane_request_id_is_replaced(bare, given):
    echoed = bare.get("/healthz", headers={REQUEST_ID_HEADER: given.encode("utf-8")}).headers[REQUEST_ID_HEADER]
    assert echoed != given and len(echoed) == 32


def test_request_id_on_a_500():
    app = bare_app()

    @app.get("/boom")
    def boom():
        raise RuntimeError("boom")

    response = TestClient(app, raise_server_exceptions=False).get("/boom", headers={REQUEST_ID_HEADER: "boom-1"})
    assert response.status_code == 500 and response.headers[REQUEST_ID_HEADER] == "boom-1"
    assert value(samples(TestClient(app)), "rag_http_requests_total", route="/boom", method="GET", status="500") == 1


def test_unmatched_paths_share_one_label(bare):
    bare.get("/no/such/path/1")
    bare.get("/no/such/path/2")
    text = bare.get("/metrics").text
    assert 'route="unmatched"' in text and "/no/such/path" not in text


def test_metrics_need_the_key_unless_public():
    keyed = TestClient(bare_app(api_key="k"))
    assert keyed.get("/metrics").status_code == 401
    assert keyed.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
    public = TestClient(bare_app(api_key="k", public_metrics=True))
    assert public.get("/metrics").status_code == 200
    assert public.post("/v1/query", json={"question": "x"}).status_code == 401


def test_apps_count_apart(bare):
    bare.get("/healthz")
    other = TestClient(bare_app())
    other.get("/healthz")
    other.get("/healthz")
    assert value(samples(other), "rag_http_requests_total", route="/healthz", method="GET", status="200") == 2


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
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("info", "json")
    try:
        root.handlers[0].setStream(stream)
        logging.getLogger("rag.test").info("hello %s", "world", extra={"fields": {"verdict": "answered"}})
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("rag.test").exception("failed")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["message"] == "hello world" and lines[0]["verdict"] == "answered" and lines[0]["level"] == "INFO"
    assert lines[1]["level"] == "ERROR" and "ValueError: bad" in lines[1]["exc_info"]
    assert len(lines) == 2  # the traceback stays inside its line


# Every command a user runs, by module; each has main(argv) and argparse's --help.
COMMANDS = [
    "api.main", "ingest.cli", "api.ask", "evals.cli", "evals.calibrate", "evals.choose_thresholds", "evals.ci_sample",
    "bench.openai_server", "bench.naive_server", "bench.serve", "bench.ingest", "bench.search", "bench.burst",
    "bench.decode", "bench.embed", "bench.gguf_weights", "bench.gpu_run", "bench.gpu_stage",
]


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_help_states_its_exit_codes(module, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "exit codes" in text.lower() and "0 " in text, text[-800:]
