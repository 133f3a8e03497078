"""POST /v1/documents and GET /v1/documents over a real index: uploads go through ``DocumentService.upload``
on a runtime derived from the session's (a fresh index, the same loaded models)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from rag.indexing.index import IndexBusy
from rag.runtime import Runtime
from tests import pdf_factory
from tests.conftest import eval_set, squad_doc
from tests.test_api import TOP_K, cites_page



@pytest.fixture(scope="module")
def upload_runtime(runtime, tmp_path_factory):
    """A Runtime over a fresh, empty index that shares the session's loaded models (so uploads here leave the
    session index alone)."""
    with runtime.derive({"index": {"path": tmp_path_factory.mktemp("upload_index") / "index"}}) as rt:
        yield rt


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
    source = squad_doc("Normans.pdf")
    broken = pdf_factory.truncated_pdf(tmp_path / "broken.pdf", source).read_bytes()
    response = post_pdf(upload_client, "broken.pdf", broken)
    assert response.status_code == 422, response.text
    assert "corrupt" in response.json()["detail"] or "truncated" in response.json()["detail"]
    assert not (uploads_dir(upload_runtime) / "broken.pdf").exists()
    assert not list(uploads_dir(upload_runtime).glob(".*.part"))
    assert "uploads/broken.pdf" not in {d.path for d in upload_runtime.documents.list()}


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
    source = eval_set("squad2-dev") / "docs" / "Harvard_University.pdf"  # about 50 KB
    small = upload_runtime.derive({"api": {"max_upload_mb": 0.02}})  # about 20 KB; the same index
    with small, TestClient(create_app(small.settings, runtime=small)) as client:
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
    assert listed["uploads/Harvard_University.pdf"]["source"] == "upload"
    assert listed["uploads/Harvard_University.pdf"]["chunks"] == body["chunks"]

    query = {"question": "When was the color crimson adopted at Harvard as official color?", "top_k": TOP_K,
             "max_new_tokens": 16}
    answer = upload_client.post("/v1/query", json=query)
    assert answer.status_code == 200, answer.text
    citations = answer.json()["citations"]
    assert citations and all(c["document"] == "uploads/Harvard_University.pdf" for c in citations)
    assert cites_page(citations, "uploads/Harvard_University.pdf", 3), answer.json()
