"""The generation stage's interface, shared by every backend: the result type, the ``Generator`` protocol, and
the per-row bookkeeping (budgets, stop tokens, streamed text deltas) that each backend would otherwise repeat.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from rag.errors import ModelUnavailable

log = logging.getLogger(__name__)

TokenCallback = Callable[[str], None]
StopCheck = Callable[[], bool]  # asked once per decode step: True stops that row (its caller is gone)
FinishReason = Literal["stop", "length"]

# Qwen's chat template closes every turn with this token; generation stops on it as well as on EOS.
CHAT_END_TOKEN = "<|im_end|>"
# A decode that ends with U+FFFD is usually a multi-byte character cut in half: wait for the next token.
REPLACEMENT_CHAR = "\ufffd"
YES_WORDS = ("Yes", " Yes")
NO_WORDS = ("No", " No")


@dataclass(frozen=True)
class GenerationResult:
    """One finished generation.

    ``completion_tokens`` counts the tokens behind ``text``; the stop token itself is not counted.
    ``finish_reason`` is "stop" when the model ended its turn, "length" when the token budget ran out.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    # The log-probability of each kept token, and the probability that the first token was one of the
    # generator's probe tokens (the abstain marker's first word): confidence features, empty/None when the
    # backend cannot tell.
    token_logprobs: tuple[float, ...] = ()
    probe_probability: float | None = None
    # False when the backend returned no log-probabilities at all (an external server that ignores the request):
    # the features built from them are then marked unavailable rather than read as certain.
    logprobs_available: bool = True


class Generator(Protocol):
    """Renders chat prompts, counts their tokens, generates completions for many at once, and judges yes/no
    questions. Every backend (``rag.generation.backends``) implements it."""

    def render_chat(self, messages: list[dict[str, str]]) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def generate_batch(
        self,
        prompts: list[str],
        max_new_tokens: list[int] | int,
        on_token: list[TokenCallback | None] | None = None,
        stop: list[StopCheck | None] | None = None,
    ) -> list[GenerationResult]: ...

    def yes_probability(self, prompts: list[str]) -> list[float]: ...


class RowStreams:
    """Text deltas per row of a batched generation, from token ids as they are decoded.

    Each row keeps its token ids and emits the new suffix of their decode, holding it back while it ends in
    U+FFFD (half a multi-byte character). A row stops emitting after a stop token or its budget; ``finish``
    flushes what was held back, so the deltas of a row add up to exactly its final text. A callback that raises
    is logged and dropped: one client going away must not break the other rows of the batch.
    """

    def __init__(
        self, decode: Callable[[list[int]], str], callbacks: Sequence[TokenCallback | None], budgets: Sequence[int],
        stop_ids: Sequence[int],
    ):
        if len(callbacks) != len(budgets):
            raise ValueError(f"{len(callbacks)} callbacks for {len(budgets)} budgets")
        self._decode = decode
        self._callbacks = list(callbacks)
        self._budgets = list(budgets)
        self._stop_ids = frozenset(stop_ids)
        self._ids: list[list[int]] = [[] for _ in callbacks]
        self._emitted = [0] * len(callbacks)  # characters of the row's decode already sent
        self._done = [cb is None for cb in callbacks]

    @property
    def rows(self) -> int:
        return len(self._ids)

    def push(self, row: int, token: int) -> None:
        """Take row ``row``'s next generated token id."""
        if self._done[row]:
            return
        if token in self._stop_ids:
            self.finish(row)
            return
        self._ids[row].append(token)
        self._emit(row, final=False)
        if len(self._ids[row]) >= self._budgets[row]:
            self.finish(row)

    def finish(self, row: int) -> None:
        """Flush row ``row``, including text held back behind a trailing U+FFFD; it emits nothing more."""
        if self._callbacks[row] is not None and not self._done[row]:
            self._emit(row, final=True)
        self._done[row] = True

    def finish_all(self) -> None:
        for row in range(len(self._ids)):
            self.finish(row)

    def _emit(self, row: int, final: bool) -> None:
        callback = self._callbacks[row]
        if callback is None:
            return
        text = self._decode(self._ids[row])
        if (not final and text.endswith(REPLACEMENT_CHAR)) or len(text) <= self._emitted[row]:
            return
        delta, self._emitted[row] = text[self._emitted[row] :], len(text)
        try:
            callback(delta)
        except Exception:
            log.exception("on_token callback for row %d failed; dropping it", row)
            self._callbacks[row] = None

def cut_row(row: list[int], budget: int, stop_ids: Sequence[int]) -> tuple[list[int], FinishReason]:
    """The tokens of one generated row up to its first stop token or its own budget, and why it ended."""
    stops = set(stop_ids)
    for i, token in enumerate(row[:budget]):
        if token in stops:
            return row[:i], "stop"
    return row[:budget], "length"


def per_row_budgets(max_new_tokens: list[int] | int, n: int) -> list[int]:
    budgets = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != n:
        raise ValueError(f"got {len(budgets)} max_new_tokens values for {n} prompts")
    bad = [b for b in budgets if not isinstance(b, int) or b < 1]
    if bad:
        raise ValueError(f"max_new_tokens must be integers >= 1, got {bad[:3]}")
    return budgets


def per_row_callbacks(on_token: list[TokenCallback | None] | None, n: int) -> list[TokenCallback | None]:
    if on_token is None:
        return [None] * n
    if len(on_token) != n:
        raise ValueError(f"got {len(on_token)} on_token callbacks for {n} prompts")
    return list(on_token)


def stop_token_ids(tokenizer: Any, configured: int | list[int] | None = None) -> list[int]:
    """EOS ids from the model's generation config (``configured``) and the tokenizer, plus the chat template's
    end-of-turn token."""
    ids: list[int] = []
    ids.extend(configured if isinstance(configured, list) else [configured])
    ids.append(tokenizer.eos_token_id)
    end_of_turn = tokenizer.convert_tokens_to_ids(CHAT_END_TOKEN)
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        ids.append(end_of_turn)
    stop_ids = sorted({int(i) for i in ids if i is not None})
    if not stop_ids:
        raise ModelUnavailable("the generator's tokenizer defines no EOS token; cannot tell when an answer ends")
    return stop_ids


def first_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The first token id of each word, spelled with and without a leading space."""
    ids = set()
    for word in words:
        for spelling in (word, " " + word):
            encoded = tokenizer.encode(spelling, add_special_tokens=False)
            if encoded:
                ids.add(int(encoded[0]))
    return sorted(ids)


def single_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """Ids of the spellings of a word that are one token each (e.g. "Yes" and " Yes")."""
    ids = set()
    for word in words:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if len(encoded) == 1:
            ids.add(int(encoded[0]))
    if not ids:
        raise ModelUnavailable(f"the generator's tokenizer has no single token for any of {list(words)}")
    return sorted(ids)
