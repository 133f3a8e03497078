"""A generator backend for any OpenAI-compatible chat completions server (vLLM, TGI, Ollama, llama.cpp, ...).

``OpenAIChatGenerator`` has what the answer service uses from ``TransformersGenerator`` (``render_chat``,
``count_tokens``, ``generate_batch``, ``yes_probability``), so the batcher, the prompt, verification and confidence
stay as they are. What differs, and why:

- A remote chat server applies its own chat template, so ``render_chat`` "renders" messages to their wire form
  (a tag and the JSON list); text the caller appends (the reply prefix "Answer:") is the assistant's prefill.
  Chat APIs have no portable prefill, so the messages go without it and a reply that starts with the prefill
  has it removed: the result's text is, as locally, the continuation of the prompt.
- ``generate_batch`` sends one streamed request per row, the rows of a batch concurrently (the server batches
  them); a row whose caller is gone (``stop``) closes its connection, which servers take as a cancel.
- Token log-probabilities come from ``logprobs``/``top_logprobs`` when the server returns them; when it does
  not, ``GenerationResult.logprobs_available`` is False and the confidence features say so.
- A server that cannot be reached or answers an error raises ``GeneratorUnavailable`` (the API's 502); one that
  goes silent past ``read_timeout_s`` raises ``GenerationTimeout`` (504). Nothing waits without a limit.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from rag.generation.batching import GenerationTimeout
from rag.generation.base import GenerationResult, StopCheck, TokenCallback, per_row_budgets, per_row_callbacks
from rag.errors import RagError
from rag.settings import GenerationSettings

log = logging.getLogger(__name__)

# A rendered prompt is this tag, then the JSON list of messages, then (optionally) the assistant's prefill.
PROMPT_TAG = "openai-chat:"
CHARS_PER_TOKEN = 4  # the estimate used to budget evidence when no tokenizer is configured
_ERROR_BODY_CHARS = 300


class GeneratorUnavailable(RagError):
    """The external generator server could not be reached or answered with an error (the API's 502)."""


def render_messages(messages: list[dict[str, str]]) -> str:
    """The wire form of chat messages as a prompt string (see the module docstring)."""
    return PROMPT_TAG + json.dumps(messages, ensure_ascii=False)


def parse_prompt(prompt: str) -> tuple[list[dict[str, str]], str]:
    """(messages, prefill) of a prompt from ``render_messages`` (+ appended text); any other string is one user
    message with no prefill."""
    if not prompt.startswith(PROMPT_TAG):
        return [{"role": "user", "content": prompt}], ""
    body = prompt[len(PROMPT_TAG):]
    try:
        messages, end = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed chat prompt: {exc}") from exc
    return messages, body[end:]


class OpenAIChatGenerator:
    """Generates through ``settings.openai``'s server. ``load()`` only loads the optional tokenizer; the server is
    first contacted by the first question (a server that starts later is fine)."""

    device = "remote"

    def __init__(self, settings: GenerationSettings, probe_words: Sequence[str] = ()):
        remote = settings.openai
        if not remote.base_url.startswith(("http://", "https://")):
            raise ValueError(f"generation.openai.base_url must be an http(s) URL, got {remote.base_url!r}")
        self.settings = settings
        self.remote = remote
        self.url = remote.base_url.rstrip("/") + "/chat/completions"
        self.probe_words = tuple(probe_words)
        self.generate_calls = 0
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        headers = {"Authorization": f"Bearer {remote.api_key}"} if remote.api_key else {}
        timeout = httpx.Timeout(remote.read_timeout_s, connect=remote.connect_timeout_s)
        limits = httpx.Limits(max_connections=settings.max_batch_size)
        self._client = httpx.Client(headers=headers, timeout=timeout, limits=limits)
        self._pool = ThreadPoolExecutor(settings.max_batch_size, thread_name_prefix="rag-openai")

    def load(self) -> "OpenAIChatGenerator":
        """Load the configured tokenizer (no weights), if any."""
        if self.remote.tokenizer:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.remote.tokenizer)
        return self

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    @property
    def loaded(self) -> bool:
        return True

    # ------------------------------------------------------------------ text helpers

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return render_messages(messages)

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text``: by the configured tokenizer, else estimated at 4 characters a token."""
        if self._tokenizer is not None:
            return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    # ------------------------------------------------------------------ generation

    def generate_batch(
        self,
        prompts: list[str],
        max_new_tokens: list[int] | int,
        on_token: list[TokenCallback | None] | None = None,
        stop: list[StopCheck | None] | None = None,
    ) -> list[GenerationResult]:
        """One streamed request per prompt, all at once; the first failure is raised after every row ended."""
        budgets = per_row_budgets(max_new_tokens, len(prompts))
        callbacks = per_row_callbacks(on_token, len(prompts))
        stops = per_row_callbacks(stop, len(prompts))
        if not prompts:
            return []
        with self._lock:
            self.generate_calls += 1
        futures = [
            self._pool.submit(self._generate_one, prompt, budget, callback, check)
            for prompt, budget, callback, check in zip(prompts, budgets, callbacks, stops, strict=True)
        ]
        errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return [f.result() for f in futures]

    def _generate_one(
        self, prompt: str, budget: int, on_token: TokenCallback | None, stop: StopCheck | None,
    ) -> GenerationResult:
        messages, prefill = parse_prompt(prompt)
        body: dict[str, Any] = {
            "messages": messages, "max_tokens": budget, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.remote.model:
            body["model"] = self.remote.model
        if self.remote.logprobs:
            body["logprobs"] = True
            if self.remote.top_logprobs:
                body["top_logprobs"] = self.remote.top_logprobs
        reply = _Reply(prefill.strip(), on_token)
        for chunk in self._stream(body, stop):
            reply.add(chunk)
        return reply.result(self.probe_words, self.count_tokens(json.dumps(messages, ensure_ascii=False)))

    def _stream(self, body: dict[str, Any], stop: StopCheck | None) -> Iterator[dict[str, Any]]:
        """The server's streamed chunks as dicts; stops early (closing the connection) once ``stop()`` is True."""
        try:
            with self._client.stream("POST", self.url, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise GeneratorUnavailable(
                        f"the generator server {self.url} answered {response.status_code}: "
                        f"{response.text[:_ERROR_BODY_CHARS]}"
                    )
                for line in response.iter_lines():
                    if stop is not None and stop():
                        return
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:"):].strip()
                    if data == "[DONE]":
                        return
                    yield _chunk(data, self.url)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise GeneratorUnavailable(f"cannot connect to the generator server {self.url}: {exc!r}") from exc
            raise GenerationTimeout(
                f"the generator server {self.url} sent nothing for {self.remote.read_timeout_s:g} s "
                "(generation.openai.read_timeout_s)"
            ) from exc
        except httpx.HTTPError as exc:
            raise GeneratorUnavailable(f"cannot reach the generator server {self.url}: {exc!r}") from exc

    # ------------------------------------------------------------------ judging

    def yes_probability(self, prompts: list[str]) -> list[float]:
        """P("Yes") / (P("Yes") + P("No")) of the first reply token from its top log-probabilities; without them,
        1.0 or 0.0 from the reply's first word."""
        return [self._yes_probability_one(prompt) for prompt in prompts]

    def _yes_probability_one(self, prompt: str) -> float:
        messages, _ = parse_prompt(prompt)
        body: dict[str, Any] = {"messages": messages, "max_tokens": 1, "temperature": 0, "stream": True,
                                "logprobs": True, "top_logprobs": max(5, self.remote.top_logprobs)}
        if self.remote.model:
            body["model"] = self.remote.model
        reply = _Reply("", None)
        for chunk in self._stream(body, None):
            reply.add(chunk)
        p_yes = p_no = 0.0
        if reply.entries:
            for alt in reply.entries[0].get("top_logprobs") or [reply.entries[0]]:
                word = str(alt.get("token", "")).strip().lower()
                p_yes += math.exp(alt["logprob"]) if word == "yes" else 0.0
                p_no += math.exp(alt["logprob"]) if word == "no" else 0.0
        if p_yes + p_no > 0:
            return p_yes / (p_yes + p_no)
        return 1.0 if reply.text.strip().lower().startswith("yes") else 0.0


def _chunk(data: str, url: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as exc:
        raise GeneratorUnavailable(f"the generator server {url} sent a malformed stream chunk: {data[:100]!r}") from exc
    if not isinstance(chunk, dict):
        raise GeneratorUnavailable(f"the generator server {url} sent a malformed stream chunk: {data[:100]!r}")
    if "error" in chunk:
        raise GeneratorUnavailable(f"the generator server {url} failed mid-stream: {str(chunk['error'])[:200]}")
    return chunk


class _Reply:
    """One row's streamed reply: its text without the prefill, log-probability entries, usage, finish reason.

    Deltas go to ``on_token`` once the prefill question is settled (the first characters either spell it, and
    are dropped, or do not, and are sent)."""

    def __init__(self, prefill: str, on_token: TokenCallback | None):
        self.prefill = prefill
        self.on_token = on_token
        self.raw = ""
        self.sent = 0  # characters of ``text`` already passed to on_token
        self.entries: list[dict[str, Any]] = []
        self.usage: dict[str, Any] = {}
        self.finish: str | None = None
        self.got_logprobs = False

    def add(self, chunk: dict[str, Any]) -> None:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content") or ""
            logprobs = choice.get("logprobs") or {}
            if logprobs.get("content"):
                self.got_logprobs = True
                self.entries.extend(e for e in logprobs["content"] if isinstance(e, dict) and "logprob" in e)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
            if delta:
                self.raw += delta
                self._emit()

    def _settled(self) -> bool | None:
        """Whether the reply starts with the prefill: True/False once known, None while it may still."""
        if not self.prefill:
            return False
        head = self.raw.lstrip().lower()
        wanted = self.prefill.lower()
        if head.startswith(wanted):
            return True
        return None if wanted.startswith(head) else False

    @property
    def text(self) -> str:
        if self._settled():
            head = self.raw.lstrip()
            return head[len(self.prefill):]
        return self.raw

    def _emit(self) -> None:
        if self.on_token is None or self._settled() is None:
            return
        text = self.text
        if len(text) > self.sent:
            delta, self.sent = text[self.sent:], len(text)
            try:
                self.on_token(delta)
            except Exception:  # a client going away must not fail the row
                log.exception("on_token callback failed; dropping it")
                self.on_token = None

    def result(self, probe_words: Sequence[str], prompt_estimate: int) -> GenerationResult:
        if self._settled() is None:  # the whole reply was a prefix of the prefill: keep it as text
            self.prefill = ""
        self._emit()
        entries = self.entries[self._label_tokens():]
        probe = _probe_probability(entries[0], probe_words) if entries and probe_words else None
        completion = self.usage.get("completion_tokens")
        return GenerationResult(
            text=self.text,
            prompt_tokens=int(self.usage.get("prompt_tokens") or prompt_estimate),
            completion_tokens=int(completion) if completion is not None else len(self.entries),
            finish_reason="length" if self.finish == "length" else "stop",
            token_logprobs=tuple(float(e["logprob"]) for e in entries),
            probe_probability=probe,
            logprobs_available=self.got_logprobs,
        )

    def _label_tokens(self) -> int:
        """How many leading log-probability entries spell the prefill (0 when the reply did not repeat it)."""
        if not self._settled():
            return 0
        seen = ""
        for i, entry in enumerate(self.entries):
            seen += str(entry.get("token", ""))
            head = seen.lstrip().lower()
            if len(head) >= len(self.prefill):
                return i + 1 if head.startswith(self.prefill.lower()) else 0
        return 0


def _probe_probability(first: dict[str, Any], probe_words: Sequence[str]) -> float | None:
    """P(the first answer token starts a probe word), from its top alternatives; None when the server sent none.

    Without the server's tokenizer a token counts when its text (spaces stripped) is a non-empty prefix of a
    probe word, as the local backend counts each word's first token."""
    alternatives = first.get("top_logprobs")
    if not alternatives:
        return None
    total = 0.0
    for alt in alternatives:
        token = str(alt.get("token", "")).strip()
        if token and any(word.startswith(token) for word in probe_words):
            total += math.exp(float(alt["logprob"]))
    return min(1.0, total)
