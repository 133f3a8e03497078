"""Generator backends by name (``generation.backend``): the CTranslate2 int8 engine, the transformers model, or
an external OpenAI-compatible server. Each builder returns a loaded generator with ``render_chat``,
``count_tokens``, ``generate_batch`` and ``yes_probability`` (what the batcher and the answer service use).

"auto" picks by device: the int8 engine on a CPU (several times faster there, same greedy text), transformers on
CUDA (bf16, batched with left padding). The composition root (``rag.runtime``) passes the probe words, so this
stage knows nothing of the answering stage's prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rag.settings import Settings

Builder = Callable[[Settings, Sequence[str]], Any]


def _transformers(settings: Settings, probe_words: Sequence[str]) -> Any:
    from rag.generation.transformers_backend import TransformersGenerator
    from rag.models import resolve_generator, select_device

    return TransformersGenerator(
        resolve_generator(settings.models), select_device(settings.models), settings.generation,
        probe_words=probe_words,
    ).load()


def _ctranslate2(settings: Settings, probe_words: Sequence[str]) -> Any:
    from rag.generation.ctranslate2_backend import CTranslate2Generator
    from rag.models import resolve_engine_model, resolve_generator, select_device

    source = resolve_generator(settings.models)
    engine = resolve_engine_model(settings.models, source, settings.generation.ctranslate2.compute_type)
    return CTranslate2Generator(
        source, engine, select_device(settings.models), settings.generation, probe_words=probe_words,
    ).load()


def _openai(settings: Settings, probe_words: Sequence[str]) -> Any:
    from rag.generation.openai_client import OpenAIChatGenerator

    return OpenAIChatGenerator(settings.generation, probe_words=probe_words).load()


BACKENDS: dict[str, Builder] = {
    "ctranslate2": _ctranslate2, "transformers": _transformers, "local": _transformers, "openai": _openai,
}


def backend_name(settings: Settings) -> str:
    """The backend ``settings.generation.backend`` stands for, "auto" resolved by the device models run on."""
    backend = settings.generation.backend
    if backend == "auto":
        from rag.models import select_device

        return "transformers" if select_device(settings.models) == "cuda" else "ctranslate2"
    return "transformers" if backend == "local" else backend


def build_generator(settings: Settings, probe_words: Sequence[str] = ()) -> Any:
    """The loaded generator ``settings.generation.backend`` names; ``probe_words`` are the words whose first-token
    probability at the first step each result reports (the answering stage's abstain marker)."""
    backend = backend_name(settings)
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation.backend {backend!r}; known: auto, {', '.join(BACKENDS)}")
    return BACKENDS[backend](settings, tuple(probe_words))
