"""The GPU-hosted paths: skipped without CUDA (run on the GPU machine with `pytest -m gpu`)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_embedder_fp16_on_cuda_matches_cpu():
    from rag.indexing.embedding import SentenceTransformerEmbedder
    from rag.models import resolve_embedder
    from rag.settings import ModelSettings

    path = resolve_embedder(ModelSettings())
    texts = ["The Normans conquered England in 1066.", "Steam engines drive pistons.", "Harvard is in Cambridge."]
    gpu = SentenceTransformerEmbedder(path, device="cuda").load()
    cpu = SentenceTransformerEmbedder(path, device="cpu").load()
    a, b = gpu.embed_documents(texts), cpu.embed_documents(texts)
    assert a.dtype == np.float32 and a.shape == (3, 384)
    assert np.all(np.sum(a * b, axis=1) > 0.999)  # fp16 changes the vectors by rounding only


def test_generator_runs_in_bf16_on_cuda():
    from rag.generation.transformers_backend import TransformersGenerator
    from rag.models import resolve_generator
    from rag.settings import GenerationSettings, ModelSettings

    llm = TransformersGenerator(resolve_generator(ModelSettings()), "cuda", GenerationSettings()).load()
    assert next(llm._loaded_model().parameters()).dtype == torch.bfloat16
    prompt = llm.render_chat([{"role": "user", "content": "What is the capital of France? Answer with one word."}])
    [result] = llm.generate_batch([prompt], 8)
    assert "Paris" in result.text


def test_static_cache_compiled_decoding_matches_dynamic_on_cuda():
    """On CUDA the static cache makes transformers compile the decode step; greedy answers must not change."""
    from rag.generation.transformers_backend import TransformersGenerator
    from rag.models import resolve_generator
    from rag.settings import GenerationSettings, ModelSettings

    path = resolve_generator(ModelSettings())
    plain = TransformersGenerator(path, "cuda", GenerationSettings()).load()
    static = TransformersGenerator(path, "cuda", GenerationSettings(static_cache=True)).load()
    prompts = [
        plain.render_chat([{"role": "user", "content": "What is the capital of France? Answer with one word."}]),
        plain.render_chat([{"role": "user", "content": "Name the largest planet of the solar system in one word."}]),
    ]
    expected = [r.text for r in plain.generate_batch(prompts, 8)]
    assert "Paris" in expected[0] and "Jupiter" in expected[1]
    for _ in range(3):  # compile, then replay; bf16 kernels may round differently, so compare the facts
        texts = [r.text for r in static.generate_batch(prompts, 8)]
        assert "Paris" in texts[0] and "Jupiter" in texts[1]
