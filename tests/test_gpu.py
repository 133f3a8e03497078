"""The GPU-hosted paths: skipped without CUDA (run on the GPU machine with `pytest -m gpu`; bench/gpu_run.sh does).

Each check stands behind a figure of the GPU run (docs/benchmarks.md, "The GPU run"): the figure means nothing if
the path it times falls back to the CPU, answers wrongly in a batch, or finds other neighbours than the CPU. The
models come from the settings (``RAG_MODELS__GENERATOR`` names the staged bf16 folder on the GPU machine).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.models,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

QUESTIONS = [  # (question, a word the right answer holds): four prompt lengths, facts the 0.5B knows on a CPU
    ("What is the capital of France? Answer with one word.", "Paris"),
    ("What is the capital city of Japan? Answer with one word only, please.", "Tokyo"),
    ("Which city is the capital of Italy? One word.", "Rome"),
    ("What colour is the sky on a clear day? Answer with one word.", "blue"),
]


def _models():
    from rag.settings import Settings

    return Settings().models  # environment-aware: the GPU run points RAG_MODELS__GENERATOR at the staged folder


def _generator(**generation):
    from rag.generation.transformers_backend import TransformersGenerator
    from rag.models import resolve_generator
    from rag.settings import GenerationSettings

    return TransformersGenerator(resolve_generator(_models()), "cuda", GenerationSettings(**generation)).load()


def _prompts(llm, questions=QUESTIONS):
    return [llm.render_chat([{"role": "user", "content": question}]) for question, _ in questions]


def test_embedder_fp16_on_cuda_matches_cpu():
    from rag.indexing.embedding import SentenceTransformerEmbedder
    from rag.models import resolve_embedder

    path = resolve_embedder(_models())
    texts = ["The Normans conquered England in 1066.", "Steam engines drive pistons.", "Harvard is in Cambridge."]
    gpu = SentenceTransformerEmbedder(path, device="cuda").load()
    cpu = SentenceTransformerEmbedder(path, device="cpu").load()
    a, b = gpu.embed_documents(texts), cpu.embed_documents(texts)
    assert a.dtype == np.float32 and a.shape == (3, 384)
    assert np.all(np.sum(a * b, axis=1) > 0.999)  # fp16 changes the vectors by rounding only


def test_the_service_builds_its_models_on_cuda():
    """settings as the service reads them (models.device auto, generation.backend auto) put the embedder in fp16
    and the generator in bf16 transformers on the GPU: no figure of the GPU run is a CPU fallback's."""
    from rag.generation.backends import backend_name, build_generator
    from rag.runtime import build_embedder
    from rag.settings import Settings

    settings = Settings()
    embedder = build_embedder(settings).load()
    assert embedder.device == "cuda"
    assert next(embedder.model.parameters()).dtype == torch.float16
    assert backend_name(settings) == "transformers"
    llm = build_generator(settings)
    assert llm.device == "cuda" and next(llm.model.parameters()).device.type == "cuda"
    assert next(llm.model.parameters()).dtype == torch.bfloat16


def test_generator_runs_in_bf16_on_cuda():
    llm = _generator()
    assert next(llm._loaded_model().parameters()).dtype == torch.bfloat16
    [result] = llm.generate_batch(_prompts(llm, QUESTIONS[:1]), 8)
    assert "Paris" in result.text


def test_batched_rows_answer_as_they_would_alone_on_cuda():
    """bench.serve's concurrency figures time batches of left-padded prompts of different lengths: each row must
    still get its own answer (greedy, so bf16 rounding may change words, not facts)."""
    llm = _generator()
    prompts = _prompts(llm) * 2  # 8 rows of 4 lengths
    alone = [llm.generate_batch([prompt], 8)[0].text for prompt in prompts[:4]]
    batched = llm.generate_batch(prompts, 8)
    assert llm.generate_calls == 5  # four alone, then the eight rows in one call
    for row, result in enumerate(batched):
        word = QUESTIONS[row % 4][1]
        assert word.lower() in alone[row % 4].lower(), alone
        assert word.lower() in result.text.lower(), (row, result.text)


def test_static_cache_compiled_decoding_matches_dynamic_on_cuda():
    """On CUDA the static cache makes transformers compile the decode step; greedy answers must not change."""
    plain = _generator()
    static = _generator(static_cache=True)
    prompts = _prompts(plain, QUESTIONS[:2])
    expected = [r.text for r in plain.generate_batch(prompts, 8)]
    assert "Paris" in expected[0] and "Tokyo" in expected[1]
    for _ in range(3):  # compile, then replay; bf16 kernels may round differently, so compare the facts
        texts = [r.text for r in static.generate_batch(prompts, 8)]
        assert "Paris" in texts[0] and "Tokyo" in texts[1]


def test_static_cache_single_request_matches_dynamic_on_cuda():
    """bench.decode times the static cache at batch 1, a shape of its own to compile: same facts there too."""
    plain = _generator()
    static = _generator(static_cache=True)
    for prompt, (_, word) in zip(_prompts(plain), QUESTIONS, strict=True):
        assert word.lower() in plain.generate_batch([prompt], 8)[0].text.lower()
        assert word.lower() in static.generate_batch([prompt], 8)[0].text.lower()


def _faiss_gpu() -> int:
    try:
        from rag.indexing.vector_index import gpu_count
    except ImportError:
        return 0
    return gpu_count()


@pytest.mark.skipif(_faiss_gpu() == 0, reason="needs faiss-gpu with its CUDA 12 libraries")
@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_faiss_gpu_search_finds_the_cpu_neighbours(kind):
    """bench.search's GPU rows (flat in fp16, IVF) search a copy VectorIndex makes on the GPU: it must be made (no
    silent CPU fallback) and find what the CPU index finds."""
    from rag.indexing.vector_index import VectorIndex
    from rag.settings import IndexSettings

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((64, 384), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)  # unit centres, noise of norm 0.7: cosine ~0.67 within
    vectors = centres[rng.integers(0, 64, 20_000)] + 0.7 / np.sqrt(384) * rng.standard_normal((20_000, 384),
                                                                                                dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(20_000, dtype=np.int64) * 3  # the store's ids, not positions
    queries = vectors[:100] + 0.01 * rng.standard_normal((100, 384), dtype=np.float32)
    gpu = VectorIndex.build(ids, vectors, IndexSettings(kind=kind, ivf_nprobe=64), 384)
    cpu = VectorIndex.build(ids, vectors, IndexSettings(kind=kind, ivf_nprobe=64, use_gpu="never"), 384)
    assert gpu.kind == kind
    found, expected = gpu.search(queries, 10)[1], cpu.search(queries, 10)[1]
    assert gpu.on_gpu and not cpu.on_gpu
    assert np.all(found[:, 0] == ids[:100])  # each query's own vector comes first
    overlap = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, expected)])
    assert overlap >= 0.95, overlap  # fp16 distances may swap near-ties, not lose neighbours


def _ctranslate2_cuda() -> int:
    try:
        import ctranslate2
    except ImportError:
        return 0
    return ctranslate2.get_cuda_device_count()


@pytest.mark.skipif(_ctranslate2_cuda() == 0, reason="needs ctranslate2 with CUDA (libcublas.so.12)")
def test_ctranslate2_on_cuda_answers(tmp_path):
    """The optional CTranslate2-on-CUDA figure: the int8_float16 engine converted from the same folder answers."""
    from rag.generation.ctranslate2_backend import CTranslate2Generator
    from rag.models import resolve_engine_model, resolve_generator
    from rag.settings import CTranslate2Settings, GenerationSettings

    models = _models()
    source = resolve_generator(models)
    settings = GenerationSettings(ctranslate2=CTranslate2Settings(compute_type="int8_float16"))
    engine = resolve_engine_model(models.model_copy(update={"cache_dir": tmp_path}), source, "int8_float16")
    llm = CTranslate2Generator(source, engine, "cuda", settings).load()
    results = llm.generate_batch(_prompts(llm, QUESTIONS[:2]), 8)
    assert "Paris" in results[0].text and "Tokyo" in results[1].text
