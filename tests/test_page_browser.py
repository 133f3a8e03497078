"""The page at ``/`` in a real browser: Debian's chromium, headless, driven by Selenium through the system
chromedriver, against the app served by uvicorn over a copy of the small real index (real embedder, FAISS and
generator), with an API key. Skipped, saying why, when chromium, chromedriver or selenium is missing.

``RAG_PAGE_SCREENSHOT=docs/img/page.png`` also saves a screenshot of the answered question there (how the
README's picture is made).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from api.app import create_app
from tests import pdf_factory
from tests.test_api import ANSWERABLE, UNANSWERABLE
from tests.test_api_openai import serve

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

KEY = "page-test-key"
ANSWER_WAIT_S = 300  # a streamed answer on a busy 2-core CPU; the usual case is 5-20 s
UI_WAIT_S = 30


def _browser_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no browser: needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    """Headless chromium through the system chromedriver (Selenium Manager never downloads anything here)."""
    binary, driver_path = _browser_paths()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                     "--disable-gpu", "--lang=en-US"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page_app(runtime, tmp_path_factory):
    """The app with an API key over a copy of the session's small index (uploads and deletions here leave the
    session index alone), sharing the session's loaded models."""
    copy = tmp_path_factory.mktemp("page_index") / "index"
    shutil.copytree(runtime.settings.index.path, copy)
    with runtime.derive({"index": {"path": copy}, "api": {"api_key": KEY}}) as derived:
        yield create_app(derived.settings, runtime=derived)


@pytest.fixture(scope="module")
def base(page_app) -> str:
    with serve(page_app) as url:
        yield url.removesuffix("/v1")


def wait(driver, seconds: float = UI_WAIT_S) -> WebDriverWait:
    return WebDriverWait(driver, seconds, poll_frequency=0.2)


def visible(driver, css: str, seconds: float = UI_WAIT_S):
    return wait(driver, seconds).until(EC.visibility_of_element_located((By.CSS_SELECTOR, css)))


def document_names(driver) -> list[str]:
    # one script call, not an element per name: the table is rebuilt while we read it (stale elements)
    return driver.execute_script(
        "return [...document.querySelectorAll('#documents tbody a.document')].map((a) => a.textContent)"
    )


def ask(driver, question: str) -> None:
    """Type ``question``, press Ask, wait until the final answer or abstention is shown."""
    box = driver.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    # count the draft's updates: tokens arriving one by one show that the answer streamed into the page
    driver.execute_script("""
        window.draftUpdates = 0;
        new MutationObserver(() => window.draftUpdates++)
            .observe(document.getElementById('draft'), {childList: true, characterData: true, subtree: true});
    """)
    driver.find_element(By.ID, "ask").click()
    try:
        wait(driver, ANSWER_WAIT_S).until(
            lambda d: d.find_element(By.ID, "answer-box").is_displayed()
            or d.find_element(By.ID, "abstention").is_displayed()
        )
    except TimeoutException:
        pytest.fail(f"no answer shown within {ANSWER_WAIT_S} s; status: {driver.find_element(By.ID, 'status').text!r}")


def citation_target(href: str) -> tuple[str, str, int]:
    """(document, collection, page) of a citation link to the PDF route."""
    parts = urlsplit(href)
    match = re.fullmatch(r"/v1/documents/(.+)/file", parts.path)
    assert match, href
    page = re.fullmatch(r"page=(\d+)", parts.fragment)
    assert page, href
    return unquote(match.group(1)), parse_qs(parts.query)["collection"][0], int(page.group(1))


def shown_pages(text: str) -> tuple[int, int]:
    """The page range a link shows: '..., p. 3' or '..., pp. 2–3'."""
    match = re.search(r"pp?\. (\d+)(?:–(\d+))?$", text)
    assert match, text
    first = int(match.group(1))
    return first, int(match.group(2) or first)


def test_page_asks_for_the_key_once_then_lists_the_documents(browser, base):
    browser.get(base + "/")
    visible(browser, "#key-dialog[open]")  # the first API call got 401
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.ID, "save-key").click()
    wait(browser).until(lambda d: len(document_names(d)) >= 2)
    assert {"Normans.pdf", "Steam_engine.pdf"} <= set(document_names(browser))
    assert browser.execute_script("return localStorage.getItem('rag_api_key')") == KEY
    assert browser.get_cookie("rag_api_key")["value"] == KEY
    # entered once: a reload goes straight to the documents
    browser.refresh()
    wait(browser).until(lambda d: len(document_names(d)) >= 2)
    assert not browser.find_element(By.ID, "key-dialog").is_displayed()


@pytest.mark.e2e
def test_question_streams_an_answer_with_its_quote_confidence_and_page_citation(browser, base):
    question, answer, page, document = ANSWERABLE
    browser.get(base + "/")
    wait(browser).until(lambda d: len(document_names(d)) >= 2)
    ask(browser, question)
    assert browser.find_element(By.ID, "answer-box").is_displayed(), browser.find_element(By.ID, "status").text
    assert browser.execute_script("return window.draftUpdates") >= 2  # the draft grew token by token
    assert answer.lower() in browser.find_element(By.ID, "answer-text").text.lower()
    assert re.fullmatch(r"confidence \d+%", browser.find_element(By.ID, "confidence").text)
    quotes = browser.find_elements(By.CSS_SELECTOR, "#quotes blockquote")
    assert quotes and quotes[0].text.strip()
    links = browser.find_elements(By.CSS_SELECTOR, "#citations a.citation")
    assert links
    targets = []
    for link in links:
        cited, collection, first = citation_target(link.get_attribute("href"))
        assert collection == "default"
        assert link.text.startswith(cited + ", ")
        assert shown_pages(link.text)[0] == first  # the link opens the PDF at the passage's first page
        targets.append((cited, shown_pages(link.text)))
    assert any(cited == document and lo <= page <= hi for cited, (lo, hi) in targets), targets
    screenshot = os.environ.get("RAG_PAGE_SCREENSHOT")
    if screenshot:
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(screenshot)


@pytest.mark.e2e
def test_citation_opens_the_stored_pdf_at_the_cited_page(browser, base):
    links = browser.find_elements(By.CSS_SELECTOR, "#citations a.citation")
    if not links:  # run alone: ask first
        browser.get(base + "/")
        ask(browser, ANSWERABLE[0])
        links = browser.find_elements(By.CSS_SELECTOR, "#citations a.citation")
    href = links[0].get_attribute("href")
    document, _, page = citation_target(href)
    # what the link fetches, from the page, with the key only in the cookie (a link sends no Authorization)
    status, kind, head = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {credentials: 'same-origin'}).then(async (r) => {
            const bytes = new Uint8Array(await r.arrayBuffer()).slice(0, 5);
            done([r.status, r.headers.get('content-type'), String.fromCharCode(...bytes)]);
        }).catch((e) => done([0, String(e), '']));
    """, href.split("#")[0])
    assert (status, kind, head) == (200, "application/pdf", "%PDF-"), (document, status, kind, head)
    # the click opens a new tab on the PDF at the cited page
    home = browser.current_window_handle
    links[0].click()
    wait(browser).until(lambda d: len(d.window_handles) == 2)
    browser.switch_to.window(next(h for h in browser.window_handles if h != home))
    try:
        wait(browser).until(lambda d: urlsplit(d.current_url).fragment == f"page={page}")
        assert urlsplit(browser.current_url).path == urlsplit(href).path
    finally:
        browser.close()
        browser.switch_to.window(home)


@pytest.mark.e2e
def test_unanswerable_question_says_not_in_the_documents_with_nearest_passages_not_sources(browser, base):
    browser.get(base + "/")
    wait(browser).until(lambda d: len(document_names(d)) >= 2)
    ask(browser, UNANSWERABLE)
    abstention = browser.find_element(By.ID, "abstention")
    assert abstention.is_displayed()
    assert "Not in the documents" in abstention.text
    assert "Nearest passages (not sources)" in abstention.text
    assert browser.find_element(By.ID, "abstention-reason").text
    assert browser.find_elements(By.CSS_SELECTOR, "#nearest a.nearest")  # shown, as nearest passages
    assert not browser.find_element(By.ID, "answer-box").is_displayed()
    assert not browser.find_elements(By.CSS_SELECTOR, "#citations a.citation")  # and never as sources


def test_upload_and_delete_a_document_in_a_new_collection(browser, base, tmp_path):
    pdf = pdf_factory.text_pdf(tmp_path / "harbour.pdf", [
        "The harbour master of Port Elnor keeps the tide tables. The lighthouse was painted red in 1911.",
    ])
    browser.get(base + "/")
    wait(browser).until(lambda d: len(document_names(d)) >= 2)
    browser.find_element(By.ID, "new-collection").click()
    prompt = wait(browser).until(EC.alert_is_present())
    prompt.send_keys("browser-test")
    prompt.accept()
    wait(browser).until(lambda d: not document_names(d))
    assert browser.find_element(By.ID, "collection").get_attribute("value") == "browser-test"
    browser.find_element(By.ID, "upload-file").send_keys(str(pdf))
    browser.find_element(By.ID, "upload").click()
    wait(browser, 120).until(lambda d: document_names(d) == ["uploads/harbour.pdf"])
    assert "1 pages" in browser.find_element(By.ID, "documents-status").text
    options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#collection option")]
    assert {"default", "browser-test"} <= set(options)

    browser.find_element(By.CSS_SELECTOR, "#documents tbody button.delete").click()
    wait(browser).until(EC.alert_is_present()).accept()  # "Remove ...?"
    wait(browser).until(lambda d: not document_names(d))
    assert "Removed uploads/harbour.pdf" in browser.find_element(By.ID, "documents-status").text
    # the default collection is untouched
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "collection")).select_by_value("default")
    wait(browser).until(lambda d: {"Normans.pdf", "Steam_engine.pdf"} <= set(document_names(d)))
