"""bench.gguf_weights: the GGUF that travels to the GPU machine becomes the same weights the service loads there."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.gguf_weights import hf_name


@pytest.mark.slow  # reads and writes about 4 GB
@pytest.mark.models
def test_every_tensor_matches_the_models_conversion_in_bf16(tmp_path):
    """bench.gguf_weights dequantizes the packaged 0.5B GGUF itself; every tensor must equal, bit for bit, what
    rag.models' conversion (transformers' GGUF loader, float32) holds once cast to bf16 as the CUDA backend loads it."""
    torch = pytest.importorskip("torch")
    from safetensors import safe_open

    from bench.gguf_weights import convert, packaged_gguf
    from rag.models import resolve_generator
    from rag.settings import ModelSettings

    name = "qwen2.5-coder-0.5b-instruct-q4km"
    reference = Path(resolve_generator(ModelSettings(generator=f"package:{name}")))  # converted once per machine
    gguf = packaged_gguf(name, tmp_path / f"{name}.gguf")
    done = convert(gguf, reference, tmp_path / "bf16", threads=2)
    ours = safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt")
    theirs = safe_open(str(reference / "model.safetensors"), "pt")
    assert set(ours.keys()) == set(theirs.keys()) and done["tensors"] == len(set(ours.keys()))
    for key in theirs.keys():
        expected = theirs.get_tensor(key).to(torch.bfloat16)
        got = ours.get_tensor(key)
        assert got.dtype == torch.bfloat16 and got.shape == expected.shape, key
        assert torch.equal(got, expected), key
    for item in ("config.json", "tokenizer.json", "chat_template.jinja"):
        assert (tmp_path / "bf16" / item).is_file()


def test_names_outside_the_qwen2_layout_are_refused():
    assert hf_name("blk.3.ffn_down.weight") == "model.layers.3.mlp.down_proj.weight"
    assert hf_name("output.weight") == "lm_head.weight"
    with pytest.raises(ValueError, match="rope_freqs"):
        hf_name("rope_freqs.weight")
