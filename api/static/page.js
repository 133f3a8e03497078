// The page at "/": plain JavaScript over the service's own API (no framework, no CDN).
// Every server text is put in the page with textContent, never as HTML.
"use strict";

const KEY_STORE = "rag_api_key";          // localStorage: the API key, entered once
const KEY_COOKIE = "rag_api_key";         // cookie: the same key, so a plain link (a citation's PDF) is authorised
const COLLECTION_STORE = "rag_collection";
const COLLECTION_NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/;

const state = {
  key: localStorage.getItem(KEY_STORE) || "",
  collection: localStorage.getItem(COLLECTION_STORE) || "default",
  collections: true,   // false when the server has no GET /v1/collections (one index, no collection field)
  keyPrompt: null,     // the pending "enter the key" promise, shared by requests that got 401 together
};

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

// ------------------------------------------------------------------------------------------ API key

function setCookie(key) {
  const value = key ? encodeURIComponent(key) : "";
  const age = key ? "" : "; max-age=0";
  document.cookie = `${KEY_COOKIE}=${value}; path=/; SameSite=Strict${age}`;
}

function useKey(key) {
  state.key = key;
  if (key) localStorage.setItem(KEY_STORE, key); else localStorage.removeItem(KEY_STORE);
  setCookie(key);
}

// Resolves when a key is entered; rejects when the dialog is closed without one.
function askForKey(message) {
  if (state.keyPrompt) return state.keyPrompt;
  const dialog = $("key-dialog");
  $("key-error").textContent = message || "";
  $("api-key").value = "";
  state.keyPrompt = new Promise((resolve, reject) => {
    dialog.addEventListener("close", () => {
      state.keyPrompt = null;
      const key = dialog.returnValue === "key" ? $("api-key").value.trim() : "";
      if (key) { useKey(key); resolve(key); } else reject(new Error("this server needs an API key"));
    }, { once: true });
  });
  dialog.returnValue = "";
  dialog.showModal();
  return state.keyPrompt;
}

// fetch with the key; on 401 asks for the key (once for all waiting requests) and tries again.
async function api(path, options = {}, retried = false) {
  const headers = { ...(options.headers || {}) };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 && !retried) {
    await askForKey(state.key ? "That key was refused." : "");
    return api(path, options, true);
  }
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    const detail = body.detail;
    if (Array.isArray(detail)) return detail.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
    return `${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// ------------------------------------------------------------------------------------------ links

function encodePath(document) {
  return document.split("/").map(encodeURIComponent).join("/");
}

// The stored PDF, opened at the page: the browser's PDF viewer reads "#page=N".
function pdfUrl(document, page) {
  const query = `collection=${encodeURIComponent(state.collection)}`;
  return `/v1/documents/${encodePath(document)}/file?${query}#page=${page}`;
}

function pagesLabel(pages) {
  return pages[0] === pages[1] ? `p. ${pages[0]}` : `pp. ${pages[0]}–${pages[1]}`;
}

function pdfLink(document, pages, className) {
  return el("a", {
    href: pdfUrl(document, pages[0]), target: "_blank", rel: "noopener", className,
    textContent: `${document}, ${pagesLabel(pages)}`,
  });
}

// ------------------------------------------------------------------------------------------ collections

async function loadCollections() {
  const select = $("collection");
  let names = [];
  try {
    const response = await api("/v1/collections");
    if (response.status === 404) {
      state.collections = false;
    } else if (!response.ok) {
      $("documents-status").textContent = await errorText(response);
    } else {
      const collections = await response.json();
      names = collections.map((c) => c.name);
      select.replaceChildren(...collections.map((c) => el("option", {
        value: c.name, textContent: `${c.name} (${c.documents} documents)`,
      })));
    }
  } catch (error) {
    $("documents-status").textContent = error.message;
  }
  if (!state.collections) {
    state.collection = "default";
    select.replaceChildren(el("option", { value: "default", textContent: "default" }));
    select.disabled = true;
    select.title = "This server has a single index";
    $("new-collection").hidden = true;
    return;
  }
  if (!names.includes(state.collection)) {
    // a new collection exists once its first document is uploaded; until then only this page knows it
    select.append(el("option", { value: state.collection, textContent: `${state.collection} (new)` }));
  }
  select.value = state.collection;
}

function chooseCollection(name) {
  state.collection = name;
  localStorage.setItem(COLLECTION_STORE, name);
  $("result").hidden = true;
  $("status").textContent = "";
  loadDocuments();
}

function newCollection() {
  const name = (prompt("Name of the new collection (a-z, 0-9, - and _):") || "").trim();
  if (!name) return;
  if (!COLLECTION_NAME.test(name)) {
    $("documents-status").textContent = `"${name}" is not a collection name: lower-case letters, digits, - and _.`;
    return;
  }
  state.collection = name;
  loadCollections().then(() => chooseCollection(name));
}

// ------------------------------------------------------------------------------------------ documents

function collectionQuery() {
  return state.collections ? `?collection=${encodeURIComponent(state.collection)}` : "";
}

async function loadDocuments() {
  const body = $("documents").tBodies[0];
  const response = await api(`/v1/documents${collectionQuery()}`);
  if (response.status === 404) {  // a collection this page made up, not uploaded to yet
    body.replaceChildren();
    $("no-documents").hidden = false;
    $("collection-summary").textContent = "";
    return;
  }
  if (!response.ok) {
    $("documents-status").textContent = await errorText(response);
    return;
  }
  const documents = await response.json();
  body.replaceChildren(...documents.map((d) => el("tr", {},
    el("td", {}, el("a", {
      href: pdfUrl(d.document, 1), target: "_blank", rel: "noopener", className: "document", textContent: d.document,
    })),
    el("td", { textContent: d.pages }),
    el("td", { textContent: d.chunks }),
    el("td", {}, el("button", {
      type: "button", className: "delete", textContent: "Delete", title: `Remove ${d.document} from the index`,
      onclick: () => deleteDocument(d.document),
    })),
  )));
  $("no-documents").hidden = documents.length > 0;
  const pages = documents.reduce((n, d) => n + d.pages, 0);
  $("collection-summary").textContent = `${documents.length} documents, ${pages} pages`;
}

async function deleteDocument(document) {
  if (!confirm(`Remove ${document} from "${state.collection}"? Its chunks leave the index.`)) return;
  const status = $("documents-status");
  status.textContent = `Removing ${document}…`;
  const response = await api(`/v1/documents/${encodePath(document)}${collectionQuery()}`, { method: "DELETE" });
  if (!response.ok) {
    status.textContent = await errorText(response);
    return;
  }
  const removed = await response.json();
  status.textContent = `Removed ${removed.document} (${removed.removed_chunks} chunks).`;
  await Promise.all([loadDocuments(), loadCollections()]);
}

async function upload(event) {
  event.preventDefault();
  const file = $("upload-file").files[0];
  if (!file) return;
  const status = $("documents-status");
  const button = $("upload");
  const form = new FormData();
  form.append("file", file);
  status.textContent = `Ingesting ${file.name}…`;
  button.disabled = true;
  try {
    const response = await api(`/v1/documents${collectionQuery()}`, { method: "POST", body: form });
    if (!response.ok) {
      status.textContent = await errorText(response);
      return;
    }
    const done = await response.json();
    status.textContent = `${done.document}: ${done.pages} pages, ${done.chunks} chunks (${done.status}).`;
    $("upload-form").reset();
    await Promise.all([loadDocuments(), loadCollections()]);
  } catch (error) {
    status.textContent = error.message;
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------------------------ asking

// Server-sent events from a POST (EventSource can only GET and cannot send the key): yields {event, data}.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

function showAnswer(body) {
  $("draft-box").hidden = true;
  if (body.abstained) {
    $("answer-box").hidden = true;
    $("abstention").hidden = false;
    $("abstention-reason").textContent = body.reason || "";
    // Servers with collections put the nearest passages in "nearest" and leave "citations" empty; older ones
    // put them in "citations". Either way they are shown as what they are: not sources.
    const nearest = body.nearest || body.citations || [];
    $("nearest").replaceChildren(...nearest.map((c) => el("li", {},
      pdfLink(c.document, c.pages, "nearest"), el("p", { className: "snippet", textContent: c.snippet }),
    )));
    $("status").textContent = "";
    return;
  }
  $("abstention").hidden = true;
  $("answer-box").hidden = false;
  $("answer-text").textContent = body.answer;
  $("confidence").textContent = body.confidence == null ? "" : `confidence ${Math.round(body.confidence * 100)}%`;
  // A computed figure shows its formula and where each input is quoted; a refused one says why.
  const calc = body.calculation;
  const inputs = calc ? calc.inputs.filter((i) => i.document).map((i) => `${i.written} (${i.document} p. ${i.page})`) : [];
  $("calculation").textContent = calc ? `Computed: ${calc.expression} = ${calc.result}; inputs: ${inputs.join(", ")}`
    : body.calculation_refused ? `Calculation not computed: ${body.calculation_refused}` : "";
  $("calculation").hidden = !$("calculation").textContent;
  const unquoted = body.unquoted_figures || [];
  $("unquoted").textContent = unquoted.length ? `Figures not in the quotes, check them: ${unquoted.join(", ")}` : "";
  $("unquoted").hidden = !unquoted.length;
  $("quotes").replaceChildren(...(body.quotes || []).map((q) => el("blockquote", {},
    el("p", { textContent: `“${q.text}”` }), el("footer", {}, "— ", pdfLink(q.document, q.pages, "quote-source")),
  )));
  $("citations").replaceChildren(...body.citations.map((c) => el("li", {},
    pdfLink(c.document, c.pages, "citation"), el("p", { className: "snippet", textContent: c.snippet }),
  )));
  const seconds = body.timings && body.timings.total_s;
  $("status").textContent = seconds ? `Answered in ${seconds.toFixed(1)} s.` : "";
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  const button = $("ask");
  const status = $("status");
  button.disabled = true;
  status.textContent = "Searching the documents…";
  $("result").hidden = false;
  $("draft-box").hidden = false;
  $("draft").textContent = "";
  $("answer-box").hidden = true;
  $("abstention").hidden = true;
  const body = { question, stream: true };
  if (state.collections) body.collection = state.collection;
  try {
    const response = await api("/v1/query", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (!response.ok) {
      $("result").hidden = true;
      status.textContent = await errorText(response);
      return;
    }
    for await (const { event: kind, data } of sseEvents(response)) {
      if (kind === "token") {
        $("draft").textContent += data.text;
        status.textContent = "Writing the answer…";
      } else if (kind === "final") {
        showAnswer(data);  // authoritative: verification may have turned the draft into an abstention
      } else if (kind === "error") {
        status.textContent = `Error: ${typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)}`;
      }
    }
  } catch (error) {
    status.textContent = `Error: ${error.message}`;
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------------------------ start

async function changeKey() {
  try {
    await askForKey("");
  } catch {
    return;  // closed without a key: keep the old one
  }
  await loadCollections();
  await loadDocuments();
}

function start() {
  setCookie(state.key);  // the cookie follows the stored key (a fresh browser session has none)
  $("ask-form").addEventListener("submit", ask);
  $("upload-form").addEventListener("submit", upload);
  $("collection").addEventListener("change", (e) => chooseCollection(e.target.value));
  $("new-collection").addEventListener("click", newCollection);
  $("change-key").addEventListener("click", changeKey);
  $("forget-key").addEventListener("click", () => { useKey(""); $("key-dialog").close(); });
  loadCollections().then(loadDocuments).catch((error) => {
    $("documents-status").textContent = error.message;
  });
}

start();
