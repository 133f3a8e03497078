"""The prepared GPU run (issue 21): the -m gpu tests, then every GPU benchmark, within a time budget, into one JSON.

``bench/gpu_run.sh`` calls this on the GPU machine after the staging commands (``python -m bench.gpu_stage``
prints them). Each step runs one of our commands in a subprocess (its output streamed to the log, its time capped),
in priority order, and its figures are read from the JSON that command writes:

====================  ==============================================================================================
step                  command and fixed sizes
====================  ==============================================================================================
models                the staged GGUFs -> bf16 folders (``bench.gguf_weights``), once per warm machine
tests                 ``pytest -m gpu`` on the test files that hold GPU tests
decode                ``bench.decode``: the 0.5B, transformers bf16, static cache off/on; 64 new tokens, 2 timed
                      calls at batch 1, batch 8 and 64 for the dynamic cache
embed                 ``bench.embed``: 8,192 passages of the manuals part at batch 64 (the ingest's), 256, 1024
index                 ``ingest.cli`` of squad2-dev into the index ``serve`` and ``accuracy`` share (not a figure)
serve                 ``bench.serve`` ours and naive, concurrency 1, 8, 64, 64 requests a level (the first two cut
                      after 5 s), 64 new tokens, relevance gate open (every request generates)
decode_large          ``bench.decode`` for the 1.5B, static cache off/on, batch 1
accuracy              ``rag-eval`` of the 1.5B on squad2-dev, the 40-question CI sample (``--limit 40 --seed 0``)
search                ``bench.search`` at 1M vectors, flat and IVF (faiss-gpu rows), 128 queries, 50 at batch 1
ingest                ``bench.ingest`` on the manuals part (7 R manuals and cplusplus.pdf, 1,828 pages), local
                      engine then the Ray engine with one GPU actor, 16 workers
ct2                   ``bench.decode`` with CTranslate2 on CUDA (int8_float16), the 0.5B, when its wheel sees CUDA
====================  ==============================================================================================

A step whose needs are missing (no CUDA, faiss without GPUs, Ray or the 1.5B not staged) is recorded as skipped
with the reason; a step the budget cannot fit any more is recorded as "not run: time budget". ``--smoke`` (the
CPU dry run) also runs each skipped step's command at the smallest sizes on this machine and records how it
went under ``smoke``: those numbers are never figures. ``--only`` reruns some steps (a second command on a warm
machine). Writes ``OUT/gpu-figures.json``: the versions, nvidia-smi, every step's status and figures, and a
summary of each figure against its target.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
SMALL = "qwen2.5-coder-0.5b-instruct-q4km"
LARGE = "qwen2.5-coder-1.5b-instruct-q4km"
# The part of the manuals corpus staged for the run: every R manual and the C++ Annotations (A4).
MANUALS_PART = ("R-FAQ.pdf", "R-admin.pdf", "R-data.pdf", "R-exts.pdf", "R-intro.pdf", "R-ints.pdf", "R-lang.pdf",
                "cplusplus.pdf")
LOG_TAIL = 4000  # characters of each step's output kept in the JSON (the whole output is in the log)


@dataclass
class Context:
    """What the steps share: paths, the models to use, and what this machine has."""

    out: Path
    work: Path
    smoke: bool
    generator: str  # models.generator of the 0.5B: a bf16 folder on the GPU machine, else package:NAME
    generator_large: str | None
    manuals: Path
    squad: Path
    staged: Path | None
    has: dict[str, Any] = field(default_factory=dict)

    @property
    def squad_index(self) -> Path:
        return self.work / "eval-index" / self.squad.name / "index"


@dataclass(frozen=True)
class Step:
    name: str
    needs: tuple[str, ...]  # keys of Context.has that must be true
    cap_s: float  # most seconds the step may run on the GPU machine
    command: Callable[[Context, bool], list[str]]  # (ctx, smoke) -> argv after the interpreter
    figures: Callable[[Context, Path], dict[str, Any]] | None = None  # read the step's JSON
    env: Callable[[Context, bool], dict[str, str]] = lambda ctx, smoke: {}
    smoke_cap_s: float = 300.0


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


# ---------------------------------------------------------------------------------------------- the steps


def _tests(ctx: Context, smoke: bool) -> list[str]:
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                   if "mark.gpu" in p.read_text(errors="replace"))
    return _py("-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
               f"--junitxml={ctx.work / 'pytest-gpu.xml'}", *files)


def _tests_env(ctx: Context, smoke: bool) -> dict[str, str]:
    return {"RAG_MODELS__GENERATOR": ctx.generator}  # the staged bf16 folder (tests read Settings().models)


def _tests_figures(ctx: Context, _json: Path) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    path = ctx.work / "pytest-gpu.xml"
    if not path.exists():
        return {}
    suite = ET.parse(path).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["not_passed"] = [
        {"test": f"{case.get('classname')}::{case.get('name')}", "outcome": child.tag,
         "message": (child.get("message") or "")[:300]}
        for case in suite.iter("testcase") for child in case if child.tag in ("failure", "error", "skipped")
    ]
    return counts


def _decode(ctx: Context, smoke: bool) -> list[str]:
    if smoke:
        return _py("-m", "bench.decode", "--model", ctx.generator, "--backend", "transformers", "--new-tokens", "4",
                   "--prompt-tokens", "64", "--reps", "1", "--batches", "2", "--json", str(ctx.work / "decode.json"))
    return _py("-m", "bench.decode", "--model", ctx.generator, "--backend", "transformers", "--new-tokens", "64",
               "--reps", "2", "--batches", "8,64", "--json", str(ctx.work / "decode.json"))


def _decode_large(ctx: Context, smoke: bool) -> list[str]:
    return _py("-m", "bench.decode", "--model", ctx.generator_large or "", "--backend", "transformers",
               "--new-tokens", "64", "--reps", "2", "--batches", "1", "--json", str(ctx.work / "decode_large.json"))


def _ct2(ctx: Context, smoke: bool) -> list[str]:
    # int8 weights with float16 activations: CTranslate2's usual CUDA type (int8 alone is its CPU type).
    compute = "int8" if smoke else "int8_float16"
    return _py("-m", "bench.decode", "--model", ctx.generator, "--backend", "ctranslate2", "--compute-type",
               compute, "--static-cache", "off", "--new-tokens", "4" if smoke else "64", "--reps", "1" if smoke
               else "2", "--batches", "1", "--prompt-tokens", "64" if smoke else "400",
               "--json", str(ctx.work / "ct2.json"))


def _decode_figures(_ctx: Context, path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    return {"variants": [{k: v for k, v in row.items() if k != "model"} | {"model": Path(row["model"]).name}
                         for row in data["variants"]]}


def _embed(ctx: Context, smoke: bool) -> list[str]:
    sizes = ["--passages", "64", "--batch-sizes", "64"] if smoke else ["--passages", "8192", "--batch-sizes",
                                                                        "64,256,1024"]
    return _py("-m", "bench.embed", "--docs", str(ctx.manuals), *sizes, "--json", str(ctx.work / "embed.json"))


def _embed_figures(_ctx: Context, path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    return {k: data[k] for k in ("device", "dtype", "passages", "tokens", "ingest_batch_size", "rows")}


def _index(ctx: Context, smoke: bool) -> list[str]:
    return _py("-m", "ingest.cli", str(ctx.squad / "docs"), "--index", str(ctx.squad_index), "--json", "-q")


def _serve(ctx: Context, smoke: bool) -> list[str]:
    load = ["--concurrency", "1", "--requests", "1", "--max-new-tokens", "8", "--time-limit", "60"] if smoke else [
        "--concurrency", "1,8,64", "--requests", "64", "--max-new-tokens", "64", "--time-limit", "5",
        "--request-timeout", "60"]
    return _py("-m", "bench.serve", "--index", str(ctx.squad_index), "--questions", str(ctx.squad / "qa.jsonl"),
               *load, "--json", str(ctx.work / "serve.json"))


def _serve_env(ctx: Context, smoke: bool) -> dict[str, str]:
    # The relevance gate open, as in the CPU runs of docs/benchmarks.md: every request generates.
    env = {"RAG_RETRIEVAL__MIN_RELEVANCE": "-1", "RAG_MODELS__GENERATOR": ctx.generator}
    if smoke:  # the backend the GPU run takes (auto = transformers on CUDA), not the CPU's CTranslate2
        env["RAG_GENERATION__BACKEND"] = "transformers"
    return env


def _serve_figures(_ctx: Context, path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    keep = ("concurrency", "requests", "ok", "errors", "requests_per_s", "latency_s", "ttft_s", "output_tokens",
            "output_tokens_per_s", "decode_tokens_per_s_median", "generate_calls", "server_stage_s_p50", "wall_s")
    return {"servers": {name: [{k: level.get(k) for k in keep} for level in levels]
                        for name, levels in data["servers"].items()}, "ratios": data["ratios"]}


def _accuracy(ctx: Context, smoke: bool) -> list[str]:
    return _py("-m", "evals.cli", "--set", str(ctx.squad), "--pipeline", "ours", "--limit", "2" if smoke else "40",
               "--seed", "0", "--out", str(ctx.work / "eval-report"), "--index-root", str(ctx.work / "eval-index"),
               "-q")


def _accuracy_env(ctx: Context, smoke: bool) -> dict[str, str]:
    env = {"RAG_MODELS__GENERATOR": ctx.generator if smoke else (ctx.generator_large or "")}
    if smoke:
        env["RAG_GENERATION__BACKEND"] = "transformers"
    return env


def _accuracy_figures(ctx: Context, _json: Path) -> dict[str, Any]:
    """The metrics rag-eval wrote for ours on the set (report.json: sets[0].results.ours.metrics)."""
    report = json.loads((ctx.work / "eval-report" / "report.json").read_text())
    metrics = report["sets"][0]["results"]["ours"]["metrics"]
    return {"metrics": {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}}


def _search(ctx: Context, smoke: bool) -> list[str]:
    sizes = ["--quick"] if smoke else ["--sizes", "1000000", "--queries", "128", "--batch1-queries", "50"]
    return _py("-m", "bench.search", *sizes, "--kinds", "flat,ivf", "--json", str(ctx.work / "search.json"))


def _search_figures(_ctx: Context, path: Path) -> dict[str, Any]:
    return {"rows": json.loads(path.read_text())["rows"]}


def _ingest(ctx: Context, smoke: bool) -> list[str]:
    engine = ["--engine", "ray"] if ctx.has.get("ray") else []
    sizes = ["--quick", "1", "--workers", "2"] if smoke else ["--workers", str(os.cpu_count() or 16)]
    return _py("-m", "bench.ingest", "--docs", str(ctx.manuals), *engine, *sizes, "--skip-baseline",
               "--skip-stages", "--skip-ceiling", "--json", str(ctx.work / "ingest.json"))


def _ingest_figures(ctx: Context, path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    figures = {"corpora": data.get("corpora", data)}
    if not ctx.has.get("ray"):
        figures["ray"] = "not run: Ray is not installed (stage it with the core bundle)"
    return figures


STEPS = (
    Step("tests", ("cuda",), 150, _tests, _tests_figures, _tests_env),
    Step("decode", ("cuda",), 110, _decode, _decode_figures),
    Step("embed", ("cuda",), 45, _embed, _embed_figures),
    Step("index", (), 40, _index),
    Step("serve", ("cuda",), 150, _serve, _serve_figures, _serve_env),
    Step("decode_large", ("cuda", "large_model"), 100, _decode_large, _decode_figures),
    Step("accuracy", ("cuda", "large_model"), 90, _accuracy, _accuracy_figures, _accuracy_env),
    Step("search", ("cuda", "faiss_gpu"), 150, _search, _search_figures),
    Step("ingest", ("cuda",), 100, _ingest, _ingest_figures),
    Step("ct2", ("cuda", "ct2_cuda"), 60, _ct2, _decode_figures),
)
# Steps the CPU dry run leaves out, with the reason (every other skipped step runs at smoke sizes).
NO_SMOKE = {"decode_large": "the 1.5B on a CPU is minutes per call; bench.decode is smoked with the 0.5B"}
MIN_STEP_S = 20  # a step is not started with less budget left than this


# ------------------------------------------------------------------------------------------------- running


def probe(ctx: Context) -> dict[str, Any]:
    """What this machine has: CUDA, faiss GPUs, CTranslate2's CUDA devices, Ray, the staged 1.5B."""
    has: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    try:
        import torch

        has["cuda"] = torch.cuda.is_available()
        reasons["cuda"] = "torch sees no CUDA device (torch.cuda.is_available() is False)"
    except ImportError as exc:
        has["cuda"], reasons["cuda"] = False, f"torch is not importable: {exc}"
    try:
        from rag.indexing.vector_index import gpu_count

        has["faiss_gpu"] = gpu_count() > 0
        reasons["faiss_gpu"] = "faiss sees no GPU (faiss-cpu installed, or faiss-gpu without the CUDA 12 libraries)"
    except ImportError as exc:
        has["faiss_gpu"], reasons["faiss_gpu"] = False, f"faiss is not importable: {exc}"
    try:
        import ctranslate2

        has["ct2_cuda"] = ctranslate2.get_cuda_device_count() > 0
        reasons["ct2_cuda"] = (f"ctranslate2 {ctranslate2.__version__} sees no CUDA device: its wheel is built for "
                               "CUDA 12 and needs libcublas.so.12 (nvidia-cublas-cu12, staged with the faiss-gpu "
                               "bundle) on LD_LIBRARY_PATH")
    except ImportError as exc:
        has["ct2_cuda"], reasons["ct2_cuda"] = False, f"ctranslate2 is not importable: {exc}"
    has["ray"] = importlib.util.find_spec("ray") is not None
    reasons["ray"] = "Ray is not installed"
    has["large_model"] = bool(ctx.generator_large) and (
        not Path(ctx.generator_large).is_absolute() or Path(ctx.generator_large).is_dir())
    reasons["large_model"] = "the 1.5B is not staged (its bundle: python -m bench.gpu_stage --bundles 1.5b)"
    has["reasons"] = {k: v for k, v in reasons.items() if not has.get(k)}
    return has


def _outputs(ctx: Context, step: Step) -> list[Path]:
    """What a step's command writes and its figures are read from."""
    extra = {"tests": [ctx.work / "pytest-gpu.xml"], "accuracy": [ctx.work / "eval-report"]}
    return [ctx.work / f"{step.name}.json", *extra.get(step.name, [])]


def run_step(ctx: Context, step: Step, smoke: bool, limit_s: float) -> dict[str, Any]:
    """Run ``step``'s command with ``limit_s`` seconds, streaming its output; its status, seconds and output tail."""
    for stale in _outputs(ctx, step):  # a rerun on the warm machine must not read an earlier run's figures
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink(missing_ok=True)
    argv = step.command(ctx, smoke)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **step.env(ctx, smoke)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    print(f"\n==== {step.name}{' (smoke, not a figure)' if smoke else ''}: {' '.join(argv[1:])} "
          f"[limit {limit_s:.0f} s]", flush=True)
    tail: collections.deque[str] = collections.deque(maxlen=200)
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line)
        sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=limit_s)
        status = "ok" if rc == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: parse pools, uvicorn threads, Ray's driver
        rc, status = proc.wait(), "timeout"
    reader.join(10)
    seconds = time.monotonic() - started
    print(f"==== {step.name}: {status} (exit {rc}) in {seconds:.1f} s", flush=True)
    return {"status": status, "exit_code": rc, "seconds": round(seconds, 1), "command": argv[1:],
            "env": step.env(ctx, smoke), "log_tail": "".join(tail)[-LOG_TAIL:]}


def step_figures(ctx: Context, step: Step, result: dict[str, Any]) -> None:
    """Add ``figures`` from the step's JSON (also after a timeout: the benchmarks write as they go)."""
    if step.figures is None:
        return
    path = ctx.work / f"{step.name}.json"
    try:
        result["figures"] = step.figures(ctx, path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        result["figures_error"] = f"{type(exc).__name__}: {exc}"


def prepare_models(ctx: Context, smoke: bool) -> dict[str, Any]:
    """The staged GGUFs -> bf16 folders under WORK/models (kept while the machine stays warm). The smoke run
    converts the 0.5B only (the 1.5B's 3.35 GB would take minutes on a CPU and no smoke step uses it)."""
    from bench.gguf_weights import convert

    done: dict[str, Any] = {}
    if ctx.staged is None:
        return {"status": "skipped", "reason": "nothing staged (STAGED_FILES unset): the generators are "
                f"{ctx.generator} and {ctx.generator_large} as this machine resolves them"}
    for name, attr in ((SMALL, "generator"), (LARGE, "generator_large")):
        gguf, like = ctx.staged / "gpu-models" / f"{name}.gguf", ctx.staged / "gpu-models" / name
        folder = ctx.work / "models" / name
        if smoke and name == LARGE:
            done[name] = {"status": "not converted in the smoke run"}
            ctx.generator_large = None
            continue
        if (folder / "model.safetensors").is_file():
            done[name] = {"status": "kept", "folder": str(folder)}
        elif gguf.is_file() and like.is_dir():
            print(f"==== models: {gguf.name} -> {folder} (bf16)", flush=True)
            done[name] = {"status": "converted", "folder": str(folder), **convert(gguf, like, folder)}
        else:
            done[name] = {"status": "not staged", "missing": str(gguf)}
            if attr == "generator_large":
                ctx.generator_large = None
            continue
        setattr(ctx, attr, str(folder))
    return {"status": "ok", "models": done}


def environment() -> dict[str, Any]:
    """Versions of what the run uses, the GPU as torch sees it, and nvidia-smi's report."""
    from importlib.metadata import PackageNotFoundError, version

    from bench._common import machine_info

    versions = {}
    for dist in ("torch", "transformers", "sentence-transformers", "faiss-gpu", "faiss-cpu", "ctranslate2", "ray",
                 "numpy", "pydantic", "fastapi", "pypdf", "gguf", "pytest"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    import torch

    info: dict[str, Any] = {"versions": versions, "machine": machine_info(),
                            "torch_cuda": torch.version.cuda, "cuda_devices": torch.cuda.device_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                       "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count}
    smi = shutil.which("nvidia-smi")
    if smi:
        done = subprocess.run([smi], capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = done.stdout or done.stderr
    else:
        info["nvidia_smi"] = "nvidia-smi: not on PATH (no NVIDIA driver on this machine)"
    return info


# ------------------------------------------------------------------------------------------------- summary

def summary(steps: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each figure the issue asks for, its target, its value (None when not measured, with the reason)."""
    rows: list[dict[str, Any]] = []

    def add(figure: str, target: str, step: str, read: Callable[[dict], Any], met: Callable[[Any], bool] | None):
        result = steps.get(step, {})
        value, reason = None, None
        if "figures" in result:  # a failed or timed-out step keeps what its command wrote before it stopped
            try:
                value = read(result["figures"])
            except (KeyError, IndexError, TypeError, StopIteration):
                value = None
        if value is None:
            reason = result.get("reason") or result.get("figures_error") or f"{step}: {result.get('status', 'not run')}"
        rows.append({"figure": figure, "target": target, "value": value, "step_status": result.get("status"),
                     "met": met(value) if (met and value is not None) else None, "open": reason})

    def variant(figs: dict, static: bool) -> dict:
        return next(v for v in figs["variants"] if v["static_cache"] == static)

    add("-m gpu tests: passed, failed + errors, skipped", "all pass", "tests",
        lambda f: [f["passed"], f["failures"] + f["errors"], f["skipped"]], lambda v: v[1] == 0 and v[0] > 0)
    add("embedding tokens/s, fp16, MiniLM, batch 64 (ingest.embed_batch_size)", ">= 3,000,000", "embed",
        lambda f: next(r for r in f["rows"] if r["batch_size"] == 64)["tokens_per_s"], lambda v: v >= 3e6)
    add("embedding tokens/s, fp16, MiniLM, best batch", ">= 3,000,000", "embed",
        lambda f: max(r["tokens_per_s"] for r in f["rows"]), lambda v: v >= 3e6)
    add("ingest pages/s end to end, manuals part, local engine", ">= 150", "ingest",
        lambda f: f["corpora"][0]["ours"]["pages_per_s"], lambda v: v >= 150)
    add("ingest pages/s, same files, Ray engine with one GPU actor", "(overhead vs local)", "ingest",
        lambda f: f["corpora"][0]["ours_ray"]["pages_per_s"], None)
    for step, label in (("decode", "0.5B"), ("decode_large", "1.5B")):
        for static in (False, True):
            cache = "static cache" if static else "dynamic cache"
            add(f"{label} decode tokens/s, one request, {cache}", ">= 300", step,
                lambda f, s=static: variant(f, s)["decode_tokens_per_s"], lambda v: v >= 300)
            add(f"{label} time to first token (s), one request, {cache}", "-", step,
                lambda f, s=static: variant(f, s)["ttft_s"], None)
    for concurrency in (1, 8, 64):
        add(f"serve c={concurrency}: ours/naive requests/s", ">= 10x at 64" if concurrency == 64 else "-", "serve",
            lambda f, c=concurrency: next(r for r in f["ratios"] if r["concurrency"] == c)["rps_ratio"],
            (lambda v: v >= 10) if concurrency == 64 else None)
    add("serve c=64: ours latency p95 (s), 64-token answers", "< 2", "serve",
        lambda f: next(r for r in f["ratios"] if r["concurrency"] == 64)["p95_ours_s"], lambda v: v < 2)
    for kind in ("flat", "ivf"):
        add(f"faiss-gpu search p50 (ms) at 1M vectors, {kind}, batch 1", "< 5", "search",
            lambda f, k=kind: next(r for r in f["rows"] if r["kind"] == k and r["device"] == "gpu"
                                   and not r.get("skipped"))["p50_ms_batch1"], lambda v: v < 5)
    add("1.5B grounded accuracy, squad2-dev CI sample (40), GPU", "(CPU: 0.675)", "accuracy",
        lambda f: f["metrics"]["grounded_accuracy"], None)
    add("1.5B latency p50 / p95 (s) per question, same run", "(CPU: 20.1 / 33.8)", "accuracy",
        lambda f: [f["metrics"]["latency_p50_s"], f["metrics"]["latency_p95_s"]], None)
    add("CTranslate2 int8_float16 on CUDA, 0.5B decode tokens/s", "(optional)", "ct2",
        lambda f: f["variants"][0]["decode_tokens_per_s"], None)
    return rows


# ------------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit codes: 0 the run finished (every step's status, failures included, "
                                     "is in gpu-figures.json); 2 usage error or missing data.")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu-figures.json ($OUT there)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-run"),
                        help="scratch folder: models, indexes, each step's JSON (default /tmp/gpu-run)")
    parser.add_argument("--budget-s", type=float, default=330.0, help="seconds for all the steps (default 330)")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU dry run: skipped steps also run at the smallest sizes (never figures)")
    parser.add_argument("--only", help="run only these steps, comma-separated (a rerun)")
    parser.add_argument("--skip", help="leave these steps out, comma-separated")
    parser.add_argument("--staged", type=Path, default=os.environ.get("STAGED_FILES") or None,
                        help="the staged files (default $STAGED_FILES): gpu-models/, gpu-data/")
    parser.add_argument("--generator", default=f"package:{SMALL}", help="the 0.5B when nothing is staged")
    parser.add_argument("--generator-large", default=f"package:{LARGE}", help="the 1.5B when nothing is staged")
    parser.add_argument("--manuals", type=Path, help="the manuals part (default: staged, else bench-out/manuals)")
    parser.add_argument("--squad", type=Path, help="the squad2-dev set (default: staged, else ../shared/eval)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [s.name for s in STEPS]
    only = [n.strip() for n in args.only.split(",")] if args.only else names
    skip = {n.strip() for n in args.skip.split(",")} if args.skip else set()
    unknown = [n for n in [*only, *skip] if n not in names]
    if unknown:
        print(f"gpu_run: unknown step(s) {', '.join(unknown)}; steps: {', '.join(names)}", file=sys.stderr)
        return 2
    staged = args.staged if args.staged and Path(args.staged).is_dir() else None
    data = staged / "gpu-data" if staged else None
    ctx = Context(
        out=args.out, work=args.work, smoke=args.smoke, generator=args.generator,
        generator_large=args.generator_large,
        manuals=args.manuals or (data / "manuals-part" if data else REPO / "bench-out" / "manuals"),
        squad=args.squad or (data / "squad2-dev" if data else REPO.parent / "shared" / "eval" / "squad2-dev"),
        staged=staged,
    )
    for path in (ctx.manuals, ctx.squad):
        if not path.is_dir():
            print(f"gpu_run: missing {path} (stage it, or bash bench/fetch_manuals.sh / ../shared/eval here)",
                  file=sys.stderr)
            return 2
    ctx.out.mkdir(parents=True, exist_ok=True)
    ctx.work.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    payload: dict[str, Any] = {
        "run": {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "budget_s": args.budget_s,
                "smoke": args.smoke, "command": " ".join(sys.argv), "steps_asked": [n for n in only if n not in skip],
                "manuals": str(ctx.manuals), "squad": str(ctx.squad)},
        "environment": environment(),
    }
    payload["models"] = prepare_models(ctx, args.smoke)
    ctx.has = probe(ctx)
    payload["run"].update(generator=ctx.generator, generator_large=ctx.generator_large, has=ctx.has)
    results: dict[str, dict[str, Any]] = {}
    payload["steps"] = results
    for step in STEPS:
        if step.name not in only or step.name in skip:
            continue
        missing = [need for need in step.needs if not ctx.has.get(need)]
        left = deadline - time.monotonic()
        if missing:
            result = {"status": "skipped", "reason": "; ".join(ctx.has["reasons"][m] for m in missing)}
            if args.smoke and step.name not in NO_SMOKE:
                result["smoke"] = run_step(ctx, step, True, step.smoke_cap_s)
                step_figures(ctx, step, result["smoke"])
            elif args.smoke and step.name in NO_SMOKE:
                result["smoke"] = {"status": "not run", "reason": NO_SMOKE[step.name]}
        elif left < MIN_STEP_S and not args.smoke:
            result = {"status": "not run", "reason": f"time budget: {left:.0f} s of {args.budget_s:.0f} s left "
                      f"(rerun with --only {step.name})"}
        else:
            result = run_step(ctx, step, args.smoke, max(step.smoke_cap_s if args.smoke else min(step.cap_s, left),
                                                         MIN_STEP_S))
            step_figures(ctx, step, result)
        results[step.name] = result
        print(f"---- {step.name}: {result['status']}" + (f" ({result['reason']})" if "reason" in result else ""),
              flush=True)
        _write(ctx, payload)
    payload["summary"] = summary(results)
    payload["run"]["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _write(ctx, payload)
    print_summary(payload["summary"])
    return 0


def _write(ctx: Context, payload: dict[str, Any]) -> None:
    path = ctx.out / "gpu-figures.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)


def print_summary(rows: list[dict[str, Any]]) -> None:
    print("\n==== figures (target; value or why open)")
    for row in rows:
        value = row["value"]
        shown = (f"{value:,.3f}" if isinstance(value, float) else json.dumps(value)[:200]) if value is not None else (
            f"open: {row['open']}")
        met = "" if row["met"] is None else (" MET" if row["met"] else " MISSED")
        print(f"  {row['figure']} [{row['target']}]: {shown}{met}")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
