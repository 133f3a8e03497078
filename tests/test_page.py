"""The page at ``/``, the static files behind it and behind /docs and /redoc, and the key cookie the page sets.

No models: the app is built without entering its lifespan, so guarded routes that pass the key check answer
503 (no runtime), which is enough to tell an accepted key from a refused one. The page itself is driven in a
real browser by tests/test_page_browser.py.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.routes.page import STATIC_DIR
from rag.settings import Settings

KEY = "s3cret key/with+odd;chars"


class _Assets(HTMLParser):
    """The URLs an HTML document loads: script src, link href, img src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.urls.append(value)


def loaded_urls(html: str) -> list[str]:
    parser = _Assets()
    parser.feed(html)
    return parser.urls


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> TestClient:
    """The app with an API key and no runtime (no lifespan: nothing loads)."""
    settings = Settings().with_overrides(
        {"index": {"path": tmp_path_factory.mktemp("page") / "index"}, "api": {"api_key": KEY}}
    )
    return TestClient(create_app(settings))


def test_page_is_served_without_the_key_and_loads_only_its_own_files(keyed):
    response = keyed.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    urls = loaded_urls(response.text)
    assert "/static/page.js" in urls and "/static/page.css" in urls
    for url in urls:
        assert url.startswith("/static/"), url  # nothing from another host: the page works offline
        asset = keyed.get(url)
        assert asset.status_code == 200, url
        assert asset.content


def test_page_files_name_no_other_host():
    for name in ("index.html", "page.js", "page.css"):
        text = (STATIC_DIR / name).read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_load_their_scripts_from_the_package(keyed, path):
    assert keyed.get(path).status_code == 401  # the docs pages stay behind the key
    response = keyed.get(path, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    urls = loaded_urls(response.text)
    assert any(url.endswith(".js") for url in urls), urls
    for url in urls:
        assert url.startswith("/static/vendor/"), url
        asset = keyed.get(url)  # the assets themselves are public
        assert asset.status_code == 200, url
        assert len(asset.content) > 500, url
    assert "cdn." not in response.text and "fonts.googleapis" not in response.text


def test_key_cookie_authorises_reads(keyed):
    cookie = {"Cookie": f"rag_api_key={quote(KEY, safe='')}"}
    # past the key check: 503 because no runtime is running, not 401
    assert keyed.get("/v1/documents", headers=cookie).status_code == 503
    assert keyed.get("/openapi.json", headers=cookie).status_code == 200
    assert keyed.get("/docs", headers=cookie).status_code == 200
    assert keyed.get("/v1/documents", headers={"Cookie": "rag_api_key=wrong"}).status_code == 401


def test_key_cookie_does_not_authorise_changes_or_override_a_bearer(keyed):
    cookie = f"rag_api_key={quote(KEY, safe='')}"
    response = keyed.post("/v1/query", json={"question": "Who?"}, headers={"Cookie": cookie})
    assert response.status_code == 401, response.text  # a cookie rides along on cross-site posts: not enough
    response = keyed.post("/v1/documents", files={"file": ("x.pdf", b"%PDF-1.4", "application/pdf")},
                          headers={"Cookie": cookie})
    assert response.status_code == 401
    # a bearer that is sent is the one checked, whatever the cookie says
    both = {"Cookie": cookie, "Authorization": "Bearer wrong"}
    assert keyed.get("/v1/documents", headers=both).status_code == 401
