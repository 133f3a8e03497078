"""Generator engines side by side on the service's own prompts: transformers (PyTorch float32), CTranslate2 int8,
and llama.cpp on the packaged Q4_K_M GGUF when ``llama-cpp-python`` is installed (it only builds from source).

Prompts are the service's: each question of ``--set`` is retrieved and quoted against ``--index`` as
``AnswerService.stream`` does, and rendered with the model's chat template and the reply prefix; questions the
relevance gate abstains on are skipped. Each engine then generates greedily with the answer form's token budget,
one prompt at a time, its shared-prefix reuse on (transformers' kept KV cache, CTranslate2's static prompt,
llama.cpp's prompt cache), the engines alternating prompt by prompt so that a change in the machine's load falls
on all of them alike. Per engine: time to first token, whole answer, decode tokens/s (tokens after the first over
the time after it), and how many outputs are the same text as transformers' (the reference: the service's path
before this engine). ``--json`` keeps every output for a closer look.

examples:
  python -m bench.engines --index IDX --set ../shared/eval/squad2-dev --limit 40
  python -m bench.engines --index IDX --set ../shared/eval/squad2-dev --generator package:qwen2.5-coder-1.5b-instruct-q4km
  python -m bench.engines --index IDX --set ../shared/eval/squad2-dev --engines ctranslate2,llama.cpp --json bench-out/engines.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import fmt, machine_info, percentiles, print_header, write_json

ENGINES = ("transformers", "ctranslate2", "llama.cpp")


@dataclass
class Run:
    """One engine's timings and outputs over the prompts."""

    first_token_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    decode_tokens: int = 0
    decode_s: float = 0.0
    texts: list[str] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="an index of the set's documents")
    parser.add_argument("--set", type=Path, required=True, help="an eval set folder (qa.jsonl)")
    parser.add_argument("--limit", type=int, default=40, help="questions taken from the start of the set (default 40)")
    parser.add_argument("--generator", default=None, help="models.generator (default: the settings' default)")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"comma-separated, from {', '.join(ENGINES)} (default all; llama.cpp skipped when not installed)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per engine (default 2)")
    parser.add_argument("--json", type=Path, help="write figures and every output here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        print(f"unknown engine(s): {', '.join(unknown)}; known: {', '.join(ENGINES)}", file=sys.stderr)
        return 2
    import torch

    from rag.runtime import Runtime, quiet_libraries
    from rag.settings import Settings

    quiet_libraries()
    torch.set_num_threads(args.threads)
    overrides: dict[str, Any] = {"index": {"path": str(args.index)}, "generation": {"backend": "ctranslate2"}}
    if args.generator:
        overrides["models"] = {"generator": args.generator}
    settings = Settings().with_overrides(overrides)
    settings = settings.with_overrides({"generation": {"ctranslate2": {"threads": args.threads}}})
    info = machine_info()
    print_header("generator engines", info)
    with Runtime(settings).start() as runtime:
        prompts = _prompts(runtime, args.set / "qa.jsonl", args.limit)
        print(f"{len(prompts)} prompts from {args.set} (relevance-gated questions skipped), model {settings.models.generator}")
        runners: dict[str, Callable[[str, int], tuple[str, float, float, int]]] = {}
        for engine in engines:
            runner = _runner(engine, settings, runtime, args.threads)
            if runner is None:
                print(f"{engine}: not installed, skipped")
                continue
            runners[engine] = runner
        runs = {engine: Run() for engine in runners}
        for n, (form, prompt, budget) in enumerate(prompts, 1):
            for engine, runner in runners.items():
                text, first, total, tokens = runner(prompt, budget)
                run = runs[engine]
                run.texts.append(text)
                run.first_token_s.append(first)
                run.total_s.append(total)
                if tokens > 1:
                    run.decode_tokens += tokens - 1
                    run.decode_s += total - first
            print(f"  {n}/{len(prompts)} done", end="\r", flush=True)
    reference = runs.get("transformers")
    rows = {}
    print(f"\n{'engine':<12} {'first token p50':>16} {'p95':>6} {'answer p50':>11} {'p95':>6} {'decode tok/s':>13} {'same text as transformers':>27}")
    for engine, run in runs.items():
        same = None if reference is None else sum(a.strip() == b.strip() for a, b in zip(run.texts, reference.texts))
        first, total = percentiles(run.first_token_s, (50, 95)), percentiles(run.total_s, (50, 95))
        rate = run.decode_tokens / run.decode_s if run.decode_s else None
        rows[engine] = {"first_token_s": first, "answer_s": total, "decode_tokens_per_s": rate,
                        "same_as_transformers": same, "prompts": len(run.texts), "outputs": run.texts}
        print(f"{engine:<12} {fmt(first['p50'], 2):>16} {fmt(first['p95'], 2):>6} {fmt(total['p50'], 2):>11} "
              f"{fmt(total['p95'], 2):>6} {fmt(rate):>13} {'-' if same is None else f'{same}/{len(run.texts)}':>27}")
    write_json(args.json, {"benchmark": "engines", "machine": info, "model": settings.models.generator,
                           "set": str(args.set), "threads": args.threads, "engines": rows,
                           "prompts": [{"form": f, "budget": b} for f, _, b in prompts]})
    return 0


def _prompts(runtime: Any, qa: Path, limit: int) -> list[tuple[str, str, int]]:
    prompts = []
    for line in qa.read_text().splitlines():
        if len(prompts) >= limit:
            break
        if line.strip():
            prepared = runtime.answers.prepare(json.loads(line)["question"])
            if prepared is not None:
                prompts.append(prepared)
    return prompts


def _runner(engine: str, settings: Any, runtime: Any, threads: int) -> Callable[[str, int], tuple[str, float, float, int]] | None:
    """A function (prompt, budget) -> (text, first-token seconds, total seconds, generated tokens)."""
    if engine == "llama.cpp":
        return _llama_runner(settings, threads)
    from rag.generation.backends import BACKENDS

    generator = runtime.llm if engine == "ctranslate2" else BACKENDS[engine](settings, ())

    def run(prompt: str, budget: int) -> tuple[str, float, float, int]:
        started = time.perf_counter()
        first: list[float] = []

        def on_token(_: str) -> None:
            if not first:
                first.append(time.perf_counter() - started)

        result = generator.generate_batch([prompt], [budget], [on_token])[0]
        total = time.perf_counter() - started
        return result.text, first[0] if first else total, total, result.completion_tokens

    return run


def _llama_runner(settings: Any, threads: int) -> Callable[[str, int], tuple[str, float, float, int]] | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from rag.models import GENERATOR_PACKAGES, PACKAGE_PREFIX, _packaged_gguf

    spec = settings.models.generator
    if not spec.startswith(PACKAGE_PREFIX):
        path = Path(spec)
        if path.suffix != ".gguf":
            return None
        gguf = path
    else:  # the packaged parts joined once, under bench-out/ (the model cache keeps converted folders only)
        name = spec[len(PACKAGE_PREFIX):]
        gguf = Path("bench-out") / "gguf" / f"{name}.gguf"
        gguf.parent.mkdir(parents=True, exist_ok=True)
        if not gguf.exists():
            source = _packaged_gguf(name, GENERATOR_PACKAGES[name])
            with open(gguf.with_suffix(".part"), "wb") as out:
                for part in source.parts:
                    out.write(part.path.read_bytes())
            gguf.with_suffix(".part").rename(gguf)
    llm = Llama(model_path=str(gguf), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)

    def run(prompt: str, budget: int) -> tuple[str, float, float, int]:
        started = time.perf_counter()
        first = None
        pieces = []
        tokens = 0
        for chunk in llm.create_completion(prompt, max_tokens=budget, temperature=0.0, top_k=1, stream=True,
                                           stop=["<|im_end|>", "<|endoftext|>"]):
            if first is None:
                first = time.perf_counter() - started
            pieces.append(chunk["choices"][0]["text"])
            tokens += 1
        total = time.perf_counter() - started
        return "".join(pieces), first if first is not None else total, total, tokens

    return run


if __name__ == "__main__":
    raise SystemExit(main())
