"""Single-request decoding: time to first token and decode tokens/s of the generator, as the service runs it.

For each ``--model`` and each variant (``--backend``; for transformers with and without ``generation.static_cache``)
the generator is built by ``rag.generation.backends.build_generator`` from the settings (so ``generation.backend``
auto picks what the service would: transformers bf16 on CUDA, the CTranslate2 int8 engine on a CPU), then:

- prompts of about ``--prompt-tokens`` tokens (successive passages of the bundled ``samples/docs/Steam_engine.pdf``
  and a request for a long summary, rendered with the chat template), greedy, ``--new-tokens`` at most; a new
  passage for every call, so the prefix cache cannot serve a repeated prompt whole;
- a first call, timed apart (``first_call_s``: with the static cache on CUDA it includes compiling the decode
  step), then ``--reps`` calls at batch 1 with a streaming callback: time to first token is the first text delta,
  decode tokens/s is (completion tokens - 1) / (last - first delta);
- for the dynamic cache only, the same prompt at each of ``--batches`` above 1 (one untimed call, one timed):
  aggregate output tokens/s (the static cache compiles once per batch size, so it is measured at batch 1 only);
- the static variant's greedy text is compared with the dynamic variant's (``same_text_as_dynamic``).

The JSON is rewritten after every variant, so a run stopped at its time limit keeps what it measured.

    python -m bench.decode --model package:qwen2.5-coder-0.5b-instruct-q4km --static-cache off,on --json out.json
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import fmt, machine_info, parse_int_list, percentiles, print_header, write_json

PASSAGE_PDF = Path(__file__).resolve().parents[1] / "samples" / "docs" / "Steam_engine.pdf"
REQUEST = "Summarise the passage above in detail, in at least 300 words, section by section."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit codes: 0 done; 1 a variant failed (its traceback says why); 2 usage "
                                     "error.")
    parser.add_argument("--model", action="append", required=True, metavar="SPEC",
                        help="models.generator value (a folder, a .gguf or package:NAME); repeatable")
    parser.add_argument("--backend", default="auto", choices=["auto", "transformers", "ctranslate2"],
                        help="generation.backend (default auto: what the service picks on this device)")
    parser.add_argument("--compute-type", help="generation.ctranslate2.compute_type (default: settings, int8)")
    parser.add_argument("--static-cache", default="off,on",
                        help="generation.static_cache variants, comma-separated: off, on (transformers only)")
    parser.add_argument("--new-tokens", type=int, default=128, help="max new tokens per call (default 128)")
    parser.add_argument("--prompt-tokens", type=int, default=400, help="prompt length aimed at (default 400)")
    parser.add_argument("--reps", type=int, default=3, help="timed batch-1 calls after the first (default 3)")
    parser.add_argument("--batches", type=parse_int_list, default=[1, 8, 64],
                        help="batch sizes for the aggregate rate, dynamic cache only (default 1,8,64)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    statics = [part.strip() for part in args.static_cache.split(",") if part.strip()]
    if not statics or any(s not in ("off", "on") for s in statics):
        parser.error(f"--static-cache takes off, on; got {args.static_cache!r}")
    if min(args.new_tokens, args.prompt_tokens, args.reps) < 1:
        parser.error("--new-tokens, --prompt-tokens and --reps must be >= 1")

    from rag.generation.backends import backend_name
    from rag.runtime import quiet_libraries
    from rag.settings import Settings

    quiet_libraries()
    info = machine_info()
    print_header("decode: time to first token and tokens/s, one request", info)
    payload: dict[str, Any] = {"benchmark": "decode", "machine": info, "new_tokens": args.new_tokens,
                               "reps": args.reps, "variants": []}
    for spec in args.model:
        dynamic_text = None
        for static in statics:
            overrides: dict[str, Any] = {
                "models": {"generator": spec},
                "generation": {"backend": args.backend, "static_cache": static == "on",
                               "max_new_tokens_limit": max(512, args.new_tokens)},
            }
            if args.compute_type:
                overrides["generation"]["ctranslate2"] = {"compute_type": args.compute_type}
            settings = Settings().with_overrides(overrides)
            backend = backend_name(settings)
            if static == "on" and backend != "transformers":
                print(f"-- {spec}: static cache skipped: it is a transformers setting, the backend is {backend}")
                continue
            row, llm = measure(settings, spec, backend, static == "on", args)
            if static == "off":
                dynamic_text = row.pop("text")
            else:
                text = row.pop("text")
                row["same_text_as_dynamic"] = None if dynamic_text is None else text == dynamic_text
            payload["variants"].append(row)
            print_row(row)
            write_json(args.json, payload)
            # Released only once the figures are written (a CTranslate2 abort at release, since fixed, once cost
            # a run its figures: docs/benchmarks.md).
            del llm
            free_memory()
    return 0


def measure(settings, spec: str, backend: str, static: bool, args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """One variant's figures (see the module docstring), and the generator (the caller releases it)."""
    from rag.generation.backends import build_generator

    started = time.perf_counter()
    llm = build_generator(settings)
    load_s = time.perf_counter() - started
    device = getattr(llm, "device", "?")
    print(f"-- {spec}: {backend} on {device}, static cache {'on' if static else 'off'}; loaded in {load_s:.1f} s",
          flush=True)
    prompts = build_prompts(llm, args.prompt_tokens, args.reps + 1)
    prompt = prompts[0]
    row: dict[str, Any] = {
        "model": spec, "backend": backend, "device": device, "static_cache": static, "load_s": load_s,
        "prompt_tokens": llm.count_tokens(prompt), "dtype": _dtype(llm, backend),
    }
    started = time.perf_counter()
    first = llm.generate_batch([prompt], args.new_tokens)[0]
    row["first_call_s"] = time.perf_counter() - started
    timed = [_timed_call(llm, other, args.new_tokens, _sync(device)) for other in prompts[1:]]
    row["completion_tokens"] = [t["tokens"] for t in timed]
    row["ttft_s"] = percentiles([t["ttft_s"] for t in timed if t["ttft_s"] is not None], (50,))["p50"]
    row["decode_tokens_per_s"] = percentiles([t["decode_tok_s"] for t in timed if t["decode_tok_s"]], (50,))["p50"]
    row["call_s"] = percentiles([t["call_s"] for t in timed], (50,))["p50"]
    row["text"] = first.text
    row["batches"] = []
    for batch in ([] if static else [b for b in args.batches if b > 1]):
        prompts = [prompt] * batch
        llm.generate_batch(prompts, args.new_tokens)  # the first call at a new shape allocates
        _sync(device)()
        started = time.perf_counter()
        results = llm.generate_batch(prompts, args.new_tokens)
        _sync(device)()
        wall = time.perf_counter() - started
        tokens = sum(r.completion_tokens for r in results)
        row["batches"].append({"batch": batch, "wall_s": wall, "output_tokens": tokens, "tokens_per_s": tokens / wall})
    return row, llm


def free_memory() -> None:
    """Collect a dropped generator and give its GPU memory back before the next variant loads."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_prompts(llm, target_tokens: int, count: int) -> list[str]:
    """``count`` chat-rendered requests for a long summary, each of about ``target_tokens`` tokens of real text.

    Each takes the next window of the passage: the prompts share only the chat template's opening, as the
    service's prompts share their instructions, so the prefix cache (generation.prefix_cache) cannot serve a
    repeated prompt whole and make the time to first token look shorter than a new question's.
    """
    from rag.ingestion.pdf_parsing import parse_pdf
    from rag.settings import IngestSettings

    text = " ".join(" ".join(page.text for page in parse_pdf(PASSAGE_PDF, IngestSettings()).pages).split())
    chars = target_tokens * 4  # about 4 characters a token in English prose; trimmed below
    while chars > 200 and llm.count_tokens(text[:chars]) > target_tokens:
        chars = int(chars * 0.9)
    if len(text) < chars * count:
        raise ValueError(f"{PASSAGE_PDF.name} holds {len(text)} characters, too few for {count} prompts of {chars}")
    return [
        llm.render_chat([{"role": "user", "content": f"{text[i * chars:(i + 1) * chars]}\n\n{REQUEST}"}])
        for i in range(count)
    ]


def _timed_call(llm, prompt: str, new_tokens: int, sync) -> dict[str, Any]:
    marks: list[float] = []
    sync()
    started = time.perf_counter()
    [result] = llm.generate_batch([prompt], new_tokens, on_token=[lambda _text: marks.append(time.perf_counter())])
    sync()
    ended = time.perf_counter()
    ttft = marks[0] - started if marks else None
    decode = None
    if marks and result.completion_tokens > 1 and ended > marks[0]:
        decode = (result.completion_tokens - 1) / (ended - marks[0])
    return {"ttft_s": ttft, "decode_tok_s": decode, "call_s": ended - started, "tokens": result.completion_tokens}


def _sync(device: str):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.synchronize
    return lambda: None


def _dtype(llm, backend: str) -> str:
    """The weights' dtype (transformers) or the engine's compute type (CTranslate2)."""
    if backend == "transformers":
        return str(next(llm.model.parameters()).dtype).replace("torch.", "")
    return llm.settings.ctranslate2.compute_type


def print_row(row: dict[str, Any]) -> None:
    same = row.get("same_text_as_dynamic")
    print(f"   prompt {row['prompt_tokens']} tokens | first call {row['first_call_s']:.2f} s | time to first token "
          f"p50 {fmt(row['ttft_s'], 3)} s | decode {fmt(row['decode_tokens_per_s'])} tokens/s | tokens "
          f"{row['completion_tokens']}" + ("" if same is None else f" | same text as dynamic: {same}"))
    for b in row["batches"]:
        print(f"   batch {b['batch']:>3}: {b['output_tokens']} tokens in {b['wall_s']:.2f} s = "
              f"{fmt(b['tokens_per_s'])} tokens/s")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
