"""Generator backends by name (``generation.backend``): the in-process transformers model, or an external
OpenAI-compatible server. Each builder returns a loaded generator with ``render_chat``, ``count_tokens``,
``generate_batch`` and ``yes_probability`` (what the batcher and the answer service use)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rag.settings import Settings


def _local(settings: Settings) -> Any:
    from rag.answering.generation import TransformersGenerator
    from rag.answering.prompting import MARKER_WORDS
    from rag.models import resolve_generator, select_device

    return TransformersGenerator(
        resolve_generator(settings.models), select_device(settings.models), settings.generation,
        probe_words=MARKER_WORDS,
    ).load()


def _openai(settings: Settings) -> Any:
    from rag.answering.openai_generator import OpenAIChatGenerator
    from rag.answering.prompting import MARKER_WORDS

    return OpenAIChatGenerator(settings.generation, probe_words=MARKER_WORDS).load()


BACKENDS: dict[str, Callable[[Settings], Any]] = {"local": _local, "openai": _openai}


def build_generator(settings: Settings) -> Any:
    """The loaded generator ``settings.generation.backend`` names."""
    backend = settings.generation.backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation.backend {backend!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[backend](settings)
