"""The CTranslate2 int8 backend (rag.generation.ctranslate2_backend) against the transformers one, and its
conversion into the model cache (rag.models.resolve_engine_model)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from rag.generation.batching import BatchingGenerator
from rag.generation.ctranslate2_backend import CTranslate2Generator, StaticPrefixes
from rag.generation.transformers_backend import TransformersGenerator
from rag.settings import SMALL_GENERATOR, GenerationSettings, ModelSettings

# Prompts whose greedy answer the model is sure enough of (first token at 0.45-1.0 under float32): int8 and float32
# must agree on them. On close calls they may not: "Name the largest planet ..." is "Jupiter" at 0.25 in
# transformers float32 and "Mercury" at 0.25 in CTranslate2, float32 as well as int8 (bench.engines measures the
# agreement on the service's real prompts).
QUESTIONS = [
    "What is the capital of France? Answer with one word.",
    "What is 2 + 3? Answer with a number only.",
    "In which year did World War II end?",
    "What colour is the sky on a clear day? One word.",
]
SYSTEM = "Answer the question in as few words as possible. If you cannot, reply: NOT IN DOCUMENTS"
LONG = "Count from 1 to 400, one number per line, and nothing else."


def _chat(generator, question: str, system: str | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return generator.render_chat(messages)


# ---------------------------------------------------------------------------------------------------
# Static prefixes: no model needed
# ---------------------------------------------------------------------------------------------------

def test_static_prefix_is_learned_from_two_prompts_and_cut_at_the_last_special_token() -> None:
    prefixes = StaticPrefixes(boundary_ids=[100], min_tokens=3)
    system = [100, 1, 2, 3, 4, 5, 101, 100]  # <|im_start|> system ... <|im_end|> <|im_start|> (of the user turn)
    first = system + [7, 8, 9, 10, 11]
    second = system + [7, 8, 42, 43]  # shares two more words, which must not become part of the prefix
    assert prefixes.split(first) == ([], first)  # nothing to compare with yet
    static, rest = prefixes.split(second)
    assert static == system[:-1]  # up to, not including, the last <|im_start|>
    assert static + rest == second
    third = system + [99]
    assert prefixes.split(third) == (system[:-1], [100, 99])
    assert prefixes.prefixes == [tuple(system[:-1])]


def test_static_prefixes_are_bounded_and_never_take_the_whole_prompt() -> None:
    prefixes = StaticPrefixes(boundary_ids=[100], min_tokens=2, limit=2)
    for opening in range(5):  # five different system turns, each seen twice
        ids = [100, opening, opening, opening, 100, 1]
        prefixes.split(ids)
        prefixes.split(ids[:-1] + [2])
    assert len(prefixes.prefixes) == 2  # the engine keeps a state per static prompt: at most ``limit``
    short = [100, 0, 0, 0]
    static, rest = prefixes.split(short)
    assert rest, "the last prompt token must be left for the first step"
    assert static + rest == short


def test_a_short_common_opening_is_not_worth_a_static_prompt() -> None:
    prefixes = StaticPrefixes(boundary_ids=[100], min_tokens=16)
    prefixes.split([100, 1, 2, 100, 5])
    assert prefixes.split([100, 1, 2, 100, 6]) == ([], [100, 1, 2, 100, 6])


# ---------------------------------------------------------------------------------------------------
# Conversion into the cache: the converter itself is replaced (the real one runs in the fixtures below)
# ---------------------------------------------------------------------------------------------------

def _fake_source(folder: Path, sha256: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "rag-conversion.json").write_text(json.dumps({"sha256": sha256}))
    return folder


def test_engine_model_is_converted_once_and_again_when_its_source_changes(tmp_path, monkeypatch) -> None:
    from rag import models

    converted: list[str] = []

    def fake_convert(source: str, out: Path, compute_type: str) -> None:
        converted.append(source)
        out.mkdir()
        (out / "model.bin").write_text(f"{compute_type} from {source}")

    monkeypatch.setattr(models, "_convert_for_engine", fake_convert)
    settings = ModelSettings(cache_dir=tmp_path / "cache")
    source = _fake_source(tmp_path / "q", "a" * 64)
    first = models.resolve_engine_model(settings, str(source), "int8")
    assert models.resolve_engine_model(settings, str(source), "int8") == first
    assert len(converted) == 1
    assert Path(first, "model.bin").read_text() == f"int8 from {source}"
    # another type is another folder; the same bytes reinstalled (only the marker's mtimes change) are not
    assert models.resolve_engine_model(settings, str(source), "float32") != first
    _fake_source(source, "b" * 64)  # the packaged weights changed: convert again, into the same place
    assert models.resolve_engine_model(settings, str(source), "int8") == first
    assert len(converted) == 3


def test_a_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch) -> None:
    from rag import models
    from rag.errors import ModelUnavailable

    def broken(source: str, out: Path, compute_type: str) -> None:
        out.mkdir()
        (out / "half-written").write_text("x")
        raise ModelUnavailable("cannot convert: unsupported architecture")

    monkeypatch.setattr(models, "_convert_for_engine", broken)
    cache = tmp_path / "cache"
    with pytest.raises(ModelUnavailable, match="unsupported architecture"):
        models.resolve_engine_model(ModelSettings(cache_dir=cache), str(_fake_source(tmp_path / "q", "a" * 64)), "int8")
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


# ---------------------------------------------------------------------------------------------------
# The real model, both engines
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_path() -> str:
    from rag.models import resolve_generator

    return resolve_generator(ModelSettings(generator=SMALL_GENERATOR))  # the float32 reference is 3x faster


@pytest.fixture(scope="module")
def engine(model_path: str) -> CTranslate2Generator:
    from rag.models import resolve_engine_model

    path = resolve_engine_model(ModelSettings(generator=SMALL_GENERATOR), model_path, "int8")
    return CTranslate2Generator(model_path, path, "cpu", GenerationSettings(), probe_words=("NOT",)).load()


@pytest.fixture(scope="module")
def reference(model_path: str) -> TransformersGenerator:
    return TransformersGenerator(model_path, "cpu", GenerationSettings(), probe_words=("NOT",)).load()


@pytest.mark.e2e
def test_same_greedy_text_and_close_numbers_as_transformers(engine, reference) -> None:
    for question in QUESTIONS:
        prompt = _chat(engine, question, SYSTEM)
        assert prompt == _chat(reference, question, SYSTEM)  # one tokenizer and chat template for both
        (ours,) = engine.generate_batch([prompt], 16)
        (theirs,) = reference.generate_batch([prompt], 16)
        assert ours.text == theirs.text, question
        assert (ours.finish_reason, ours.completion_tokens, ours.prompt_tokens) == (
            theirs.finish_reason, theirs.completion_tokens, theirs.prompt_tokens)
        # int8 weights move the numbers a little, not the picture: the confidence model reads these
        assert len(ours.token_logprobs) == ours.completion_tokens
        assert all(lp <= 0.0 for lp in ours.token_logprobs)
        assert ours.token_logprobs[0] == pytest.approx(theirs.token_logprobs[0], abs=0.15)
        assert ours.probe_probability == pytest.approx(theirs.probe_probability, abs=0.08)


@pytest.mark.e2e
def test_probe_probability_follows_the_marker(engine) -> None:
    (plain,) = engine.generate_batch([_chat(engine, QUESTIONS[0], SYSTEM)], 4)
    (marker,) = engine.generate_batch([_chat(engine, "Reply with the word NOT and nothing else.")], 4)
    assert marker.text.startswith("NOT")
    assert marker.probe_probability > 0.5 > plain.probe_probability


@pytest.mark.e2e
def test_streamed_deltas_add_up_and_rows_keep_their_own_budgets(engine) -> None:
    prompts = [_chat(engine, LONG), _chat(engine, QUESTIONS[0], SYSTEM)]
    deltas: list[list[str]] = [[], []]
    long, short = engine.generate_batch(prompts, [12, 16], [deltas[0].append, deltas[1].append])
    assert ["".join(d) for d in deltas] == [long.text, short.text]
    assert len(deltas[0]) > 3  # really incremental
    assert (long.finish_reason, long.completion_tokens) == ("length", 12)
    assert short.finish_reason == "stop" and "Paris" in short.text


@pytest.mark.e2e
def test_a_stop_check_ends_its_row_at_the_next_step(engine) -> None:
    steps = 0

    def stop() -> bool:
        nonlocal steps
        steps += 1
        return steps >= 3

    (result,) = engine.generate_batch([_chat(engine, LONG)], [200], stop=[stop])
    assert result.completion_tokens == 3 and result.finish_reason == "length"


@pytest.mark.e2e
def test_the_shared_opening_is_reused_and_changes_nothing(model_path, engine) -> None:
    without = CTranslate2Generator(
        model_path, engine.engine_path, "cpu", GenerationSettings(prefix_cache=False), probe_words=("NOT",)
    ).load()
    reused_before = engine.reused_tokens
    for question in QUESTIONS:
        prompt = _chat(engine, question, SYSTEM)
        (ours,) = engine.generate_batch([prompt], 16)
        (plain,) = without.generate_batch([prompt], 16)
        assert ours.text == plain.text
        assert ours.token_logprobs == pytest.approx(plain.token_logprobs, abs=0.05)
    assert engine.reused_tokens - reused_before >= 3 * 20  # the system turn, from the second prompt on
    assert without.reused_tokens == 0


@pytest.mark.e2e
def test_yes_probability_prefers_the_true_statement(engine) -> None:
    question = "Is the following statement true? Answer Yes or No.\n"
    true, false = engine.yes_probability([
        _chat(engine, question + "Paris is the capital of France."),
        _chat(engine, question + "Berlin is the capital of France."),
    ])
    assert 0.0 <= false < true <= 1.0


@pytest.mark.e2e
def test_batcher_takes_one_request_at_a_time_and_answers_all(engine) -> None:
    batcher = BatchingGenerator(engine, GenerationSettings(max_batch_size=8, batch_wait_ms=50)).start()
    assert batcher.max_batch_size == 1

    async def ask_all() -> list:
        prompts = [_chat(engine, q, SYSTEM) for q in QUESTIONS]
        return await asyncio.gather(*(batcher.submit(p, 16) for p in prompts))

    try:
        calls = engine.generate_calls
        results = asyncio.run(ask_all())
        assert "Paris" in results[0].text and "5" in results[1].text
        assert engine.generate_calls - calls == len(QUESTIONS)
        assert batcher.batches_run == len(QUESTIONS)
    finally:
        batcher.stop()


@pytest.mark.e2e
def test_an_abandoned_stream_stops_generating(engine) -> None:
    batcher = BatchingGenerator(engine, GenerationSettings(batch_wait_ms=0)).start()

    async def leave_after_three_deltas() -> None:
        seen = 0
        async for _ in batcher.stream(_chat(engine, LONG), 400):
            seen += 1
            if seen == 3:
                break

    try:
        started = time.monotonic()
        asyncio.run(leave_after_three_deltas())
        while batcher.batches_run < 1:
            assert time.monotonic() - started < 60, "the abandoned row kept generating"
            time.sleep(0.02)
        assert batcher.rows_stopped == 1
    finally:
        batcher.stop()


@pytest.mark.e2e
def test_the_runtime_runs_the_engine_on_a_cpu_by_default(runtime) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("on CUDA the default backend is transformers")
    assert isinstance(runtime.llm, CTranslate2Generator)
    assert runtime.batcher.max_batch_size == 1


@pytest.mark.parametrize("backend, device, expected", [
    ("auto", "cpu", "ctranslate2"), ("auto", "cuda", "transformers"), ("local", "cpu", "transformers"),
    ("transformers", "cpu", "transformers"), ("ctranslate2", "cuda", "ctranslate2"), ("openai", "cpu", "openai"),
])
def test_one_setting_chooses_the_backend_by_device(monkeypatch, backend, device, expected) -> None:
    from rag import models
    from rag.generation.backends import backend_name
    from rag.settings import Settings

    monkeypatch.setattr(models, "select_device", lambda _: device)
    openai = {"openai": {"base_url": "http://127.0.0.1:9/v1"}} if backend == "openai" else {}
    settings = Settings().with_overrides({"generation": {"backend": backend, **openai}})
    assert backend_name(settings) == expected


@pytest.mark.e2e
def test_releasing_the_engine_after_generating_does_not_abort_the_process(model_path, engine) -> None:
    """The step callback holds no reference to the generator: when the engine's worker thread dropped it last, the
    engine was destroyed from its own thread and the process aborted ("Resource deadlock avoided")."""
    import subprocess
    import sys

    code = (
        "import gc, sys\n"
        "from rag.generation.ctranslate2_backend import CTranslate2Generator\n"
        "from rag.settings import GenerationSettings\n"
        "for _ in range(2):\n"
        "    g = CTranslate2Generator(sys.argv[1], sys.argv[2], 'cpu', GenerationSettings()).load()\n"
        "    g.generate_batch([g.render_chat([{'role': 'user', 'content': 'Count to 20'}])], [6])\n"
        "    del g\n"
        "    gc.collect()\n"
        "print('released')\n"
    )
    result = subprocess.run([sys.executable, "-c", code, model_path, engine.engine_path], capture_output=True,
                            text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-500:]
    assert result.stdout.strip().endswith("released")
