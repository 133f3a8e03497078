"""Collections, document removal, the PDF file route, /v1/models, CORS and abstentions without citations, over
real indexes: one index root whose own index (the collection 'default') holds Normans.pdf and whose collection
'steam' (built by the real rag-ingest command) holds Steam_engine.pdf; the session's loaded models serve both.

Nothing here generates text: questions go through the relevance gate set at 0.99, so every answer is an
abstention made from real retrieval (its nearest passages show which collection answered).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from ingest import cli as ingest_cli
from api import ask as ask_cli
from rag.collections import Collections, collection_names, collection_path
from rag.errors import ExitCode
from rag.indexing.index import DocumentIndex
from rag.types import Answer, Citation
from tests import pdf_factory
from tests.conftest import ingest, make_settings, squad_doc

STEAM_Q = "What company developed the most successful steam engine indicator?"
NORMANS_Q = "In what country is Normandy located?"
CITATION_KEYS = {"document", "pages", "snippet", "score", "chunk_id"}


def folder_with(tmp: Path, name: str) -> Path:
    folder = tmp / name.removesuffix(".pdf")
    folder.mkdir()
    shutil.copy(squad_doc(name), folder / name)
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory, embedder) -> Path:
    """An index root: 'default' (Normans.pdf, ingested here) and 'steam' (Steam_engine.pdf, by rag-ingest)."""
    tmp = tmp_path_factory.mktemp("collections")
    root = tmp / "index"
    ingest(make_settings(root), folder_with(tmp, "Normans.pdf"), embedder)
    steam = folder_with(tmp, "Steam_engine.pdf")
    code = ingest_cli.main([str(steam), "--index", str(root), "--collection", "steam", "--workers", "1", "-q"])
    assert code == ExitCode.OK
    return root


@pytest.fixture(scope="module")
def served(runtime, root):
    """The session's models over ``root``, with a relevance gate no question passes (abstain before generating)."""
    with runtime.derive({"index": {"path": root}, "retrieval": {"min_relevance": 0.99}}) as rt:
        yield rt


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served.settings, runtime=served)) as client:
        yield client


def documents_of(passages: list[dict]) -> set[str]:
    return {p["document"] for p in passages}


# ------------------------------------------------------------------------------------------ the types


def test_an_abstention_never_carries_citations():
    passage = Citation(document="a.pdf", page_start=1, page_end=1, snippet="s", score=0.3, chunk_id=1)
    abstained = Answer(text="no", abstained=True, citations=(passage,))
    assert abstained.citations == () and abstained.nearest == (passage,)
    answered = Answer(text="yes", abstained=False, citations=(passage,))
    assert answered.citations == (passage,) and answered.nearest == ()


# ----------------------------------------------------------------------------------- listing, models


def test_collections_are_listed_with_their_sizes(client, root):
    assert collection_names(root) == ["default", "steam"]
    assert (collection_path(root, "steam") / "store.sqlite").is_file()
    response = client.get("/v1/collections")
    assert response.status_code == 200, response.text
    listed = {c["name"]: c for c in response.json()}
    assert [c["name"] for c in response.json()] == ["default", "steam"]
    assert listed["default"]["documents"] == 1 and listed["steam"]["documents"] == 1
    assert listed["default"]["chunks"] > 0 and listed["steam"]["chunks"] > 0


def test_models_list_one_model_per_collection(client):
    response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    assert response.json() == {"object": "list", "data": [
        {"id": "default", "object": "model", "created": 0, "owned_by": "grounded-rag"},
        {"id": "steam", "object": "model", "created": 0, "owned_by": "grounded-rag"},
    ]}
    assert client.get("/v1/models/steam").json()["id"] == "steam"
    assert client.get("/v1/models/nope").status_code == 404


def test_documents_are_listed_per_collection(client):
    default = client.get("/v1/documents").json()
    steam = client.get("/v1/documents", params={"collection": "steam"}).json()
    assert [(d["document"], d["collection"], d["source"]) for d in default] == [("Normans.pdf", "default", "folder")]
    assert [(d["document"], d["collection"], d["source"]) for d in steam] == [("Steam_engine.pdf", "steam", "folder")]


# ------------------------------------------------------------------------------ answering per collection


def test_each_collection_answers_from_its_own_documents_and_abstains_without_citations(client):
    for collection, document in (("steam", "Steam_engine.pdf"), ("default", "Normans.pdf")):
        # the same question to both: only the collection decides where the passages come from
        response = client.post("/v1/query", json={"question": STEAM_Q, "collection": collection})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["abstained"] and body["citations"] == [], body
        assert body["nearest"] and documents_of(body["nearest"]) == {document}, body["nearest"]
        assert all(set(c) == CITATION_KEYS for c in body["nearest"])
    omitted = client.post("/v1/query", json={"question": NORMANS_Q}).json()  # no collection: 'default'
    assert documents_of(omitted["nearest"]) == {"Normans.pdf"}


def test_chat_model_names_the_collection(client):
    messages = [{"role": "user", "content": STEAM_Q}]
    for model, document in (("steam", "Steam_engine.pdf"), ("rag", "Normans.pdf"), ("default", "Normans.pdf")):
        response = client.post("/v1/chat/completions", json={"model": model, "messages": messages})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == model and body["rag"]["abstained"]
        assert body["citations"] == [] and documents_of(body["rag"]["nearest"]) == {document}, body


def test_streamed_abstention_carries_nearest_in_its_final_event(client):
    from tests.test_api import sse_events

    response = client.post("/v1/query", json={"question": STEAM_Q, "collection": "steam", "stream": True})
    assert response.status_code == 200, response.text
    events = dict(sse_events(response.text))
    assert events["final"]["citations"] == [] and documents_of(events["final"]["nearest"]) == {"Steam_engine.pdf"}
    chat = client.post(
        "/v1/chat/completions", json={"model": "steam", "stream": True, "messages": [{"role": "user", "content": STEAM_Q}]}
    )
    chunks = [json.loads(line[6:]) for line in chat.text.splitlines() if line.startswith("data: {")]
    last = chunks[-1]
    assert last["citations"] == [] and documents_of(last["rag"]["nearest"]) == {"Steam_engine.pdf"}


# ---------------------------------------------------------------------------------- unknown and bad names


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("post", "/v1/query", {"question": STEAM_Q, "collection": "nope"}),
        ("post", "/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": STEAM_Q}]}),
        ("post", "/v1/chat/completions", {"model": "GPT-4o", "messages": [{"role": "user", "content": STEAM_Q}]}),
        ("get", "/v1/documents?collection=nope", None),
        ("delete", "/v1/documents/Normans.pdf?collection=nope", None),
        ("get", "/v1/documents/Normans.pdf/file?collection=nope", None),
    ],
)
def test_an_unknown_collection_is_404_with_the_reason(client, root, method, url, body):
    response = client.request(method, url, json=body)
    assert response.status_code == 404, response.text
    detail = response.json()["detail"]
    assert "no collection 'nope'" in detail and "default, steam" in detail or "bad collection name 'GPT-4o'" in detail
    assert not (root / "collections" / "nope").exists()  # a lookup never creates one


@pytest.mark.parametrize("name", ["Bad", "-x", "a/b", "", "x" * 65, "caf\u00e9"])
def test_a_bad_collection_name_is_422(client, name):
    query = client.post("/v1/query", json={"question": STEAM_Q, "collection": name})
    assert query.status_code == 422 and query.json()["detail"][0]["loc"] == ["body", "collection"]
    listing = client.get("/v1/documents", params={"collection": name})
    assert listing.status_code == 422 and listing.json()["detail"][0]["loc"] == ["query", "collection"]


# --------------------------------------------------------------------- uploads, the PDF route, DELETE


def post_pdf(client: TestClient, collection: str, name: str, data: bytes):
    return client.post("/v1/documents", params={"collection": collection}, files={"file": (name, data, "application/pdf")})


def test_the_pdf_route_serves_a_folder_document_inline(client):
    response = client.get("/v1/documents/Steam_engine.pdf/file", params={"collection": "steam"})
    assert response.status_code == 200, response.text
    assert response.content.startswith(b"%PDF") and response.content == squad_doc("Steam_engine.pdf").read_bytes()
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["content-disposition"].startswith("inline")
    assert 'filename="Steam_engine.pdf"' in response.headers["content-disposition"]
    # in 'default' there is no such document
    missing = client.get("/v1/documents/Steam_engine.pdf/file")
    assert missing.status_code == 404 and "no document" in missing.json()["detail"]
    for traversal in ("../Normans.pdf", "..%2F..%2Fstore.sqlite", "%2Fetc%2Fpasswd"):
        assert client.get(f"/v1/documents/{traversal}/file", params={"collection": "steam"}).status_code == 404


def test_upload_creates_a_collection_and_delete_removes_a_document(client, served, root, tmp_path):
    lighthouse = pdf_factory.text_pdf(tmp_path / "lighthouse.pdf", [
        "The lighthouse keeper of Brindlemoor is Oswin Tarrant. He has kept the light since the great storm.",
    ])
    orchard = pdf_factory.text_pdf(tmp_path / "orchard.pdf", [
        "The orchard of Fellwick grows forty kinds of apple. Its cider press dates from the year 1820.",
    ])
    assert post_pdf(client, "fresh", "lighthouse.pdf", lighthouse.read_bytes()).status_code == 201
    first = post_pdf(client, "fresh", "orchard.pdf", orchard.read_bytes())
    assert first.status_code == 201, first.text
    orchard_chunks = first.json()["chunks"]
    assert "fresh" in [c["name"] for c in client.get("/v1/collections").json()]
    listed = {d["document"]: d for d in client.get("/v1/documents", params={"collection": "fresh"}).json()}
    assert set(listed) == {"uploads/lighthouse.pdf", "uploads/orchard.pdf"}
    assert {d["collection"] for d in listed.values()} == {"fresh"} and {d["source"] for d in listed.values()} == {"upload"}
    assert client.get("/v1/documents").json()[0]["document"] == "Normans.pdf"  # 'default' untouched

    fresh = Collections(served).get("fresh")  # another opening of the same index, as another process would
    try:
        kept = fresh.documents.upload_dir / "orchard.pdf"
        assert kept.is_file()
        served_file = client.get("/v1/documents/uploads/orchard.pdf/file", params={"collection": "fresh"})
        assert served_file.status_code == 200 and served_file.content == orchard.read_bytes()
        total_before = fresh.index.vectors.ntotal
        hits = fresh.retriever.retrieve("Which orchard grows forty kinds of apple?", 5)
        assert "uploads/orchard.pdf" in {p.chunk.document for p in hits}

        deleted = client.delete("/v1/documents/uploads/orchard.pdf", params={"collection": "fresh"})
        assert deleted.status_code == 200, deleted.text
        assert deleted.json() == {"document": "uploads/orchard.pdf", "removed_chunks": orchard_chunks}
        assert not kept.exists()  # the upload's file went with it

        listed = [d["document"] for d in client.get("/v1/documents", params={"collection": "fresh"}).json()]
        assert listed == ["uploads/lighthouse.pdf"]
        # this other opening follows the committed change: fewer vectors, and retrieval no longer finds it
        hits = fresh.retriever.retrieve("Which orchard grows forty kinds of apple?", 5)
        assert {p.chunk.document for p in hits} == {"uploads/lighthouse.pdf"}
        assert fresh.index.vectors.ntotal == total_before - orchard_chunks
    finally:
        fresh.close()
    # reopened from disk, FAISS and the store agree
    reopened = DocumentIndex.open(collection_path(root, "fresh"), served.settings.index)
    try:
        assert reopened.vectors.ntotal == reopened.store.count_chunks() == listed_chunks(client, "fresh")
        assert list(reopened.store.documents()) == ["uploads/lighthouse.pdf"]
    finally:
        reopened.close()

    again = client.delete("/v1/documents/uploads/orchard.pdf", params={"collection": "fresh"})
    assert again.status_code == 404 and "no document" in again.json()["detail"]
    gone = client.get("/v1/documents/uploads/orchard.pdf/file", params={"collection": "fresh"})
    assert gone.status_code == 404


def test_a_refused_upload_leaves_no_new_collection_behind(client, served):
    """A refused upload to a collection that did not exist must not create it empty (its questions would then be
    503 "no chunks", and it would be listed): not for a bad name (415), nor for bytes that are not a PDF (422)."""
    root = served.settings.index.path
    assert post_pdf(client, "phantom-a", "notes.txt", b"%PDF-1.4 not really").status_code == 415
    assert post_pdf(client, "phantom-b", "notes.pdf", b"these bytes are not a PDF").status_code == 422
    names = [c["name"] for c in client.get("/v1/collections").json()]
    assert "phantom-a" not in names and "phantom-b" not in names
    assert not collection_path(root, "phantom-a").exists() and not collection_path(root, "phantom-b").exists()
    assert client.post("/v1/query", json={"question": "x", "collection": "phantom-b"}).status_code == 404
    # an existing collection is kept, empty or not: 'steam' still answers after a refused upload to it
    assert post_pdf(client, "steam", "notes.pdf", b"not a PDF").status_code == 422
    assert "steam" in [c["name"] for c in client.get("/v1/collections").json()]


def listed_chunks(client: TestClient, collection: str) -> int:
    return sum(d["chunks"] for d in client.get("/v1/documents", params={"collection": collection}).json())


def test_the_pdf_route_is_404_when_the_file_is_gone_from_disk(client, served, tmp_path):
    pdf = pdf_factory.text_pdf(tmp_path / "ghost.pdf", ["A short note about the ghost of Harrowgate Hall."])
    assert post_pdf(client, "ghosts", "ghost.pdf", pdf.read_bytes()).status_code == 201
    kept = collection_path(served.settings.index.path, "ghosts") / "uploads" / "ghost.pdf"
    kept.unlink()
    response = client.get("/v1/documents/uploads/ghost.pdf/file", params={"collection": "ghosts"})
    assert response.status_code == 404 and "no longer" in response.json()["detail"]


# --------------------------------------------------------------------------------------------------- CORS


def preflight(client: TestClient, origin: str):
    return client.options("/v1/query", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    })


def test_cors_is_off_by_default(client):
    assert client.app.state.settings.api.cors_origins == []
    response = preflight(client, "http://localhost:3000")
    assert "access-control-allow-origin" not in response.headers
    simple = client.get("/healthz", headers={"Origin": "http://localhost:3000"})
    assert "access-control-allow-origin" not in simple.headers


def test_cors_allows_a_listed_origin_and_refuses_others(served):
    settings = served.settings.with_overrides({"api": {"cors_origins": ["http://localhost:3000"], "api_key": "k"}})
    with TestClient(create_app(settings, runtime=served)) as client:
        allowed = preflight(client, "http://localhost:3000")  # no key on a preflight: answered before the check
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        refused = preflight(client, "http://evil.example")
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
        models = client.get("/v1/models", headers={"Origin": "http://localhost:3000", "Authorization": "Bearer k"})
        assert models.status_code == 200 and models.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert client.get("/v1/models", headers={"Origin": "http://localhost:3000"}).status_code == 401


def test_cors_origins_setting_refuses_a_malformed_origin(served):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="scheme://host"):
        served.settings.with_overrides({"api": {"cors_origins": ["http://localhost:3000/"]}})


# ------------------------------------------------------------------------------------------ the commands


def test_rag_ingest_removes_a_document_from_a_collection(root, tmp_path, capsys):
    folder = folder_with(tmp_path, "Normans.pdf")
    index = str(root)
    assert ingest_cli.main([str(folder), "--index", index, "--collection", "cli", "--workers", "1", "-q"]) == 0
    assert ingest_cli.main(["--remove", "Nope.pdf", "--index", index, "--collection", "cli"]) == ExitCode.USAGE
    assert "no document 'Nope.pdf'" in capsys.readouterr().err
    assert ingest_cli.main(["--remove", "Normans.pdf", "--index", index, "--collection", "absent"]) == ExitCode.INDEX
    assert not collection_path(root, "absent").exists()  # removing never creates a collection
    assert ingest_cli.main(["--remove", "Normans.pdf", "--index", index, "--collection", "Bad!"]) == ExitCode.USAGE
    assert ingest_cli.main(["--index", index]) == ExitCode.USAGE  # neither a folder nor --remove
    capsys.readouterr()
    assert ingest_cli.main(["--remove", "Normans.pdf", "--index", index, "--collection", "cli", "--json"]) == 0
    removed = json.loads(capsys.readouterr().out)
    assert removed[0]["document"] == "Normans.pdf" and removed[0]["removed_chunks"] > 0
    reopened = DocumentIndex.open(collection_path(root, "cli"), make_settings(root).index)
    try:
        assert reopened.store.documents() == {} and reopened.vectors.ntotal == 0
    finally:
        reopened.close()
    assert (folder / "Normans.pdf").is_file()  # the source folder is left alone


def test_rag_ask_answers_from_the_named_collection(root, capsys):
    code = ask_cli.main([STEAM_Q, "--index", str(root), "--collection", "steam", "--retrieve-only", "--json"])
    assert code == ExitCode.OK
    assert {p["document"] for p in json.loads(capsys.readouterr().out)} == {"Steam_engine.pdf"}
    assert ask_cli.main([STEAM_Q, "--index", str(root), "--collection", "nope", "--retrieve-only"]) == ExitCode.INDEX
    assert "no collection 'nope'" in capsys.readouterr().err
