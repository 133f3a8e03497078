"""The CTranslate2 backend: the same chat model, converted once to int8, run by CTranslate2's C++ engine.

On this project's 2-core CPU the int8 engine prefills and decodes several times faster than PyTorch float32 with
the same greedy text (docs/benchmarks.md, "Generator engines"), which is what lets a 1.5B reader answer in seconds.
The tokenizer and chat template still come from the transformers folder the model was converted from, so prompts
are rendered and counted exactly as for the transformers backend.

What the service relies on, and how it is kept here:

- token log-probabilities and the probe probability (the abstain marker's first word): each step's full vocabulary
  logits come back (``return_logits_vocab``); the first step's give the probe probability, every step's the chosen
  token's log-probability, computed in float64 like transformers' log-softmax.
- streaming: the step callback feeds ``RowStreams``, the same per-row text deltas as the transformers backend.
- cancellation: the callback asks the row's stop check at every step and returns True to end that row.
- shared-prefix reuse: ``StaticPrefixes`` hands the prompt's opening (chat template and instructions) to
  CTranslate2 as a ``static_prompt``, whose state the engine caches and reuses.
- batching: rows run one engine call each. CTranslate2 cannot left-pad a batch: the tokens a prompt has beyond the
  batch's shortest are decoded one step at a time, so four prompts of 298-517 tokens took 24.0 s batched against
  14.8 s one after the other (0.5B, 64 tokens each). ``preferred_batch_size`` = 1 tells the batcher so: each
  request then finishes, and frees its caller, as soon as its own row is done.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from rag.errors import ModelUnavailable
from rag.generation.base import (
    NO_WORDS, YES_WORDS, GenerationResult, RowStreams, StopCheck, TokenCallback, first_token_ids, per_row_budgets,
    per_row_callbacks, single_token_ids, stop_token_ids,
)
from rag.settings import GenerationSettings

log = logging.getLogger(__name__)


class StaticPrefixes:
    """The prompt openings handed to CTranslate2 as ``static_prompt``: learned, bounded, and stable.

    A prompt's opening is reused when a registered prefix starts it. A new prefix is learned from two consecutive
    prompts: their common token prefix, cut back to its last special token (the chat template's ``<|im_start|>``
    that opens the user turn), so the prefix is the system turn itself and not whatever words two questions happen
    to share. The engine keeps a state per static prompt, so at most ``limit`` prefixes are ever registered: the
    service's prompts open with one system turn per answer form.
    """

    def __init__(self, boundary_ids: Sequence[int], min_tokens: int = 16, limit: int = 4):
        self._boundaries = frozenset(int(i) for i in boundary_ids)
        self.min_tokens = min_tokens
        self.limit = limit
        self.prefixes: list[tuple[int, ...]] = []
        self._last: list[int] = []

    def split(self, ids: list[int]) -> tuple[list[int], list[int]]:
        """(static prefix, rest) of a prompt's token ids; the prefix is empty when none applies. The rest always
        keeps at least one token: the engine needs the last prompt token's logits for the first step."""
        best: tuple[int, ...] = ()
        for prefix in self.prefixes:
            if len(prefix) > len(best) and len(prefix) < len(ids) and tuple(ids[: len(prefix)]) == prefix:
                best = prefix
        if not best:
            best = self._learn(ids)
        self._last = ids
        return list(best), ids[len(best) :]

    def _learn(self, ids: list[int]) -> tuple[int, ...]:
        if len(self.prefixes) >= self.limit or not self._last:
            return ()
        common = len(os.path.commonprefix([self._last, ids]))
        cut = max((i for i in range(min(common, len(ids) - 1)) if ids[i] in self._boundaries), default=0)
        if cut < self.min_tokens:
            return ()
        prefix = tuple(ids[:cut])
        self.prefixes.append(prefix)
        return prefix


class CTranslate2Generator:
    """A chat model run by CTranslate2 (int8 by default), greedy decoding; the ``Generator`` protocol.

    ``model_path`` is the transformers folder (tokenizer, chat template, generation config); ``engine_path`` the
    CTranslate2 conversion of it (``rag.models.resolve_engine_model``). Weights load in ``load()``.
    """

    preferred_batch_size = 1  # see the module docstring: one engine call per row

    def __init__(
        self, model_path: str, engine_path: str, device: str, settings: GenerationSettings,
        probe_words: Sequence[str] = (),
    ):
        if not model_path or not isinstance(model_path, str):
            raise ValueError(f"model_path must be a non-empty path or model id, got {model_path!r}")
        if not engine_path or not isinstance(engine_path, str):
            raise ValueError(f"engine_path must be a CTranslate2 model folder, got {engine_path!r}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r} (use rag.models.select_device)")
        self.model_path = model_path
        self.engine_path = engine_path
        self.device = device
        self.settings = settings
        self.probe_words = tuple(probe_words)
        self.generate_calls = 0
        self.reused_tokens = 0  # prompt tokens served from a cached static prompt, over all calls
        self._engine: Any = None
        self._tokenizer: Any = None
        self._stop_ids: list[int] = []
        self._probe_ids: list[int] = []
        self._yes_ids: list[int] = []
        self._no_ids: list[int] = []
        self._prefixes: StaticPrefixes | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading

    def load(self) -> "CTranslate2Generator":
        """Load the tokenizer and the engine; raises ModelUnavailable with the fix when either is missing."""
        try:
            import ctranslate2
        except ImportError as exc:  # a core dependency, but a trimmed install may lack it
            raise ModelUnavailable(
                "generation.backend='ctranslate2' needs the ctranslate2 package: pip install 'ctranslate2==4.8.*', "
                "or set RAG_GENERATION__BACKEND=transformers"
            ) from exc
        from transformers import AutoTokenizer, GenerationConfig

        local = os.path.exists(self.model_path)
        options = self.settings.ctranslate2
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=local)
            engine = ctranslate2.Generator(
                self.engine_path, device=self.device, compute_type=options.compute_type,
                intra_threads=options.threads, inter_threads=1,
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelUnavailable(
                f"cannot load the CTranslate2 generator {self.engine_path!r} (from {self.model_path!r}): {exc}. "
                "Delete that folder to convert it again, or set RAG_GENERATION__BACKEND=transformers"
            ) from exc
        try:
            configured = GenerationConfig.from_pretrained(self.model_path, local_files_only=local).eos_token_id
        except OSError:  # a folder without generation_config.json: the tokenizer's EOS and end of turn suffice
            configured = None
        self._engine, self._tokenizer = engine, tokenizer
        self._stop_ids = stop_token_ids(tokenizer, configured)
        self._probe_ids = first_token_ids(tokenizer, self.probe_words)
        self._yes_ids = single_token_ids(tokenizer, YES_WORDS)
        self._no_ids = single_token_ids(tokenizer, NO_WORDS)
        # The chat template's markers (<|im_start|>, <|im_end|>) are added special tokens; all_special_ids may
        # list only EOS.
        boundaries = [i for i, token in tokenizer.added_tokens_decoder.items() if token.special]
        self._prefixes = StaticPrefixes(boundaries) if self.settings.prefix_cache else None
        return self

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    @property
    def tokenizer(self) -> Any:
        return self._loaded()[1]

    @property
    def stop_ids(self) -> list[int]:
        return list(self._stop_ids)

    # ------------------------------------------------------------------ text helpers

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The chat template applied to ``messages`` (``{"role", "content"}`` dicts), ready for the assistant turn."""
        text = self._loaded()[1].apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not isinstance(text, str):
            raise TypeError(f"chat template returned {type(text).__name__}, expected str")
        return text

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` as the model sees it (no special tokens added)."""
        return len(self._loaded()[1](text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------ generation

    def generate_batch(
        self,
        prompts: list[str],
        max_new_tokens: list[int] | int,
        on_token: list[TokenCallback | None] | None = None,
        stop: list[StopCheck | None] | None = None,
    ) -> list[GenerationResult]:
        """Greedy completions of already-rendered ``prompts``, one engine call per prompt, in order.

        Same contract as ``TransformersGenerator.generate_batch``: per-row budgets, ``on_token[i]`` receives row
        i's text deltas (their concatenation equals the result's text), ``stop[i]`` is asked at every step and
        ends row i once it returns True.
        """
        budgets = per_row_budgets(max_new_tokens, len(prompts))
        callbacks = per_row_callbacks(on_token, len(prompts))
        stops = per_row_callbacks(stop, len(prompts))
        if not prompts:
            return []
        engine, tokenizer = self._loaded()
        with self._lock:
            streams = RowStreams(_decoder(tokenizer), callbacks, budgets, self._stop_ids)
            results = []
            for row, prompt in enumerate(prompts):
                ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                results.append(self._generate_row(engine, row, ids, budgets[row], streams, stops[row]))
                streams.finish(row)
        return results

    def _generate_row(
        self, engine: Any, row: int, ids: list[int], budget: int, streams: RowStreams, stop: StopCheck | None,
    ) -> GenerationResult:
        if not ids:
            raise ValueError("cannot generate from an empty prompt")
        static, rest = self._prefixes.split(ids) if self._prefixes is not None else ([], ids)
        convert = self._tokenizer.convert_ids_to_tokens
        tokens: list[int] = []
        logprobs: list[float] = []
        probe: list[float] = []
        ended = False
        # The callback must not hold this object: the engine's worker thread may drop the callback last, and the
        # engine destroyed from its own thread aborts the process ("Resource deadlock avoided"). Locals only.
        probe_ids, stop_ids = list(self._probe_ids), frozenset(self._stop_ids)

        def on_step(step: Any) -> bool:  # called by the engine for every generated token, end token included
            nonlocal ended
            logits = np.asarray(step.logits, dtype=np.float64).reshape(-1)  # (V,)
            logz = _logsumexp(logits)
            if step.step == 0 and probe_ids:
                probe.append(float(np.exp(logits[probe_ids] - logz).sum()))
            if step.token_id in stop_ids:
                ended = True
                return True
            tokens.append(int(step.token_id))
            logprobs.append(float(logits[step.token_id] - logz))
            streams.push(row, int(step.token_id))
            return stop is not None and bool(stop())

        engine.generate_batch(
            [convert(rest)], static_prompt=convert(static) if static else None, max_length=budget,
            sampling_topk=1, end_token=self._stop_ids, include_prompt_in_result=False, return_logits_vocab=True,
            callback=on_step,
        )
        self.generate_calls += 1
        self.reused_tokens += len(static)
        kept = tokens[:budget]
        return GenerationResult(
            text=self._tokenizer.decode(kept, skip_special_tokens=True), prompt_tokens=len(ids), completion_tokens=len(kept),
            finish_reason="stop" if ended else "length", token_logprobs=tuple(logprobs[: len(kept)]),
            probe_probability=probe[0] if probe else None,
        )

    # ------------------------------------------------------------------ judging

    def yes_probability(self, prompts: list[str]) -> list[float]:
        """P("Yes") / (P("Yes") + P("No")) for the token right after each rendered prompt (one prefill each)."""
        engine, tokenizer = self._loaded()
        scores = []
        with self._lock:
            for prompt in prompts:
                ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                first: list[np.ndarray] = []

                def on_step(step: Any) -> bool:
                    first.append(np.asarray(step.logits, dtype=np.float64).reshape(-1))
                    return True

                engine.generate_batch(
                    [tokenizer.convert_ids_to_tokens(ids)], max_length=1, sampling_topk=1,
                    include_prompt_in_result=False, return_logits_vocab=True, callback=on_step,
                )
                logits = first[0]
                probs = np.exp(logits - _logsumexp(logits))
                p_yes, p_no = probs[self._yes_ids].sum(), probs[self._no_ids].sum()
                scores.append(float(p_yes / max(p_yes + p_no, 1e-12)))
        return scores

    def _loaded(self) -> tuple[Any, Any]:
        if self._engine is None:
            raise RuntimeError("CTranslate2Generator.load() must be called first")
        return self._engine, self._tokenizer


def _decoder(tokenizer: Any) -> Any:
    """Token ids -> text, holding the tokenizer only (see ``_generate_row`` on what callbacks may hold)."""
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def _logsumexp(values: np.ndarray) -> float:
    top = float(values.max())
    return top + float(np.log(np.exp(values - top).sum()))
