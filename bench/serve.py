"""Serving load: our rag-serve (dynamic batching) against a naive server (one generate per request, one at
a time: bench/naive_server.py), same questions, same index, same model, loopback only.

Each server is either started in this process (uvicorn in a thread on 127.0.0.1, over ``--index`` or an
index built from ``--docs``; both servers then share one loaded Runtime) or reached at ``--url`` /
``--naive-url`` (loopback addresses only). At each concurrency level, that many clients send
``--requests`` requests between them, back to back: ``POST /v1/query`` with ``stream: true`` and a fixed
``max_new_tokens``. Per level: requests/s (answered requests over the level's wall time), latency
p50/p95/p99 (request sent to ``done`` event), time to first ``token`` event, output tokens/s, and errors by
status. Output tokens come from the final event's ``usage.completion_tokens`` when the server reports it; else
they are the tokens of the streamed answer text under the generator's tokenizer (a lower bound: the model's
"Answer:"/"Source:" labels and abstained drafts are not streamed). Requests the relevance gate answers
without generating are counted as "abstained" and have no first token.

A level stops sending after ``--time-limit`` seconds and gives up on what is still running
``--request-timeout`` seconds later; the script then stops its servers by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bench._common import fmt, machine_info, parse_int_list, percentiles, print_header, write_json

EPILOG = """\
examples:
  python -m bench.serve --index rag-index --questions ../shared/eval/squad2-dev/qa.jsonl --json bench-out/serve.json
  python -m bench.serve --docs ../shared/eval/squad2-dev/docs --questions ../shared/eval/squad2-dev/qa.jsonl
  python -m bench.serve --url http://127.0.0.1:8000 --naive-url http://127.0.0.1:8001 --concurrency 1,64
  python -m bench.serve --index rag-index --servers naive --concurrency 64     one server per run (time limits)
  python -m bench.serve --docs ../shared/eval/squad2-dev/docs --quick       2 levels x 2 requests, 8 tokens

exit codes: 0 done (request errors are reported, not fatal); 2 usage error; 3 a server did not become ready.
"""

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
QUICK = {"concurrency": [1, 2], "requests": 2, "max_new_tokens": 8, "time_limit": 120.0}
DEFAULT_QUESTIONS = Path(__file__).resolve().parents[1].parent / "shared" / "eval" / "squad2-dev" / "qa.jsonl"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serve", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_argument_group("servers")
    where.add_argument("--url", help="a running rag-serve (loopback), instead of starting one here")
    where.add_argument("--naive-url", help="a running bench.naive_server (loopback), instead of starting one here")
    where.add_argument("--index", type=Path, help="index folder for the servers started here")
    where.add_argument("--docs", type=Path, help="build a temporary index from this folder of PDFs first")
    where.add_argument("--servers", default="ours,naive",
                       help="which servers to load, comma-separated: ours, naive (default both)")
    where.add_argument(
        "--backends", default="",
        help="generation backends to run the servers started here with, one after the other, comma-separated "
        "(e.g. transformers,ctranslate2: the engine beside PyTorch float32 in one run); default the settings' own",
    )
    load = parser.add_argument_group("load")
    load.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS,
                      help="qa.jsonl with a 'question' per line (default ../shared/eval/squad2-dev/qa.jsonl)")
    load.add_argument("--include-unanswerable", action="store_true",
                      help="also send questions marked answerable=false (most abstain without generating)")
    load.add_argument("--concurrency", type=parse_int_list, default=[1, 8, 32, 64],
                      help="concurrency levels, comma-separated (default 1,8,32,64)")
    load.add_argument("--requests", type=int, default=128, help="requests per level (default 128)")
    load.add_argument(
        "--max-new-tokens", type=int, default=64,
        help="max_new_tokens of every request (default 64); 0 sends none, so the server's own budget for the "
        "question's answer form applies (what a client that sets nothing gets)",
    )
    load.add_argument("--time-limit", type=float, default=300.0,
                      help="seconds after which a level sends no more requests (default 300)")
    load.add_argument("--request-timeout", type=float, default=120.0, help="client timeout per request (default 120)")
    parser.add_argument("--quick", action="store_true",
                        help="concurrency 1,2, 2 requests each, 8 new tokens, 120 s limit, unless given (smoke test)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:  # small values for whatever the command line left at its default
        for name, value in QUICK.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    for url in (args.url, args.naive_url):
        if url and urlparse(url).hostname not in LOOPBACK:
            parser.error(f"{url}: only loopback servers (127.0.0.1, localhost, ::1) may be loaded by this script")
    servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    if not servers or any(name not in ("ours", "naive") for name in servers):
        parser.error(f"--servers takes ours, naive; got {args.servers!r}")
    external = {"ours": args.url, "naive": args.naive_url}
    needs_local = any(not external[name] for name in servers)
    backends = [name.strip() for name in args.backends.split(",") if name.strip()] or [None]
    if backends != [None] and any(external[name] for name in servers):
        parser.error("--backends applies to servers started here; drop --url/--naive-url")
    if needs_local and not (args.index or args.docs):
        parser.error("give --index DIR or --docs DIR for the servers started here (or --url and --naive-url)")
    if args.index and not (args.index / "store.sqlite").exists():
        parser.error(f"no index at {args.index}: run `rag-ingest DOCS_DIR --index {args.index}` or use --docs")
    if args.docs and not args.docs.is_dir():
        parser.error(f"not a folder: {args.docs}")
    if args.requests < 1 or args.max_new_tokens < 0 or args.time_limit <= 0 or args.request_timeout <= 0:
        parser.error("--requests and --max-new-tokens must be >= 1, the time limits > 0")
    try:
        questions = load_questions(args.questions, args.include_unanswerable)
    except (OSError, ValueError) as exc:
        parser.error(f"--questions: {exc}")

    from rag.runtime import quiet_libraries

    quiet_libraries()
    info = machine_info()
    print_header("serving: rag-serve (batched) vs naive (one generate per request)", info)
    print(f"{len(questions)} questions from {args.questions}; levels {args.concurrency}, {args.requests} requests "
          f"each, max_new_tokens {args.max_new_tokens}, streaming", flush=True)

    results: dict[str, list[dict[str, Any]]] = {}
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
            local = LocalServers(args, Path(tmp), backend) if needs_local else None
            try:
                count_tokens = local.count_tokens if local else generator_token_counter()
                for name in servers:
                    label = name if backend is None else f"{name}/{backend}"
                    with _serve(external[name], local, name) as url:
                        print(f"-- {label} at {url}", flush=True)
                        if not asyncio.run(wait_ready(url, 120.0)):
                            print(f"serve: error: {url}/readyz did not answer 200 within 120 s", file=sys.stderr)
                            return 3
                        asyncio.run(run_level(url, questions[:1], 1, 1, args, count_tokens))  # warm-up, not counted
                        calls = local.generate_calls if local and not external[name] else None
                        results[label] = []
                        for concurrency in args.concurrency:
                            level = asyncio.run(
                                run_level(url, questions, concurrency, args.requests, args, count_tokens, calls)
                            )
                            results[label].append(level)
                            print_level(level)
            finally:
                if local:
                    local.close()

    ratios = compare(results)
    for row in ratios:
        print(f"concurrency {row['concurrency']:>3}: {row['server']} / {row['against']} requests/s "
              f"{fmt(row['rps_ratio'], 2)}x, p95 {fmt(row['p95_s'], 2)} s vs {fmt(row['p95_against_s'], 2)} s")
    write_json(args.json, {
        "benchmark": "serve", "machine": info, "questions": str(args.questions), "n_questions": len(questions),
        "max_new_tokens": args.max_new_tokens, "requests_per_level": args.requests, "servers": results,
        "ratios": ratios,
    })
    return 0


# -------------------------------------------------------------------------------------------- servers


class LocalServers:
    """One started Runtime (over --index, or an index built from --docs) behind our app and the naive one."""

    def __init__(self, args: argparse.Namespace, tmp: Path, backend: str | None = None):
        from rag.runtime import Runtime
        from rag.settings import Settings

        overrides: dict[str, Any] = {"index": {"path": args.index or tmp / "index"}}
        if backend:
            overrides["generation"] = {"backend": backend}
        settings = Settings().with_overrides(overrides)
        if args.docs:
            started = time.perf_counter()
            report = _ingest(settings, args.docs)
            print(f"indexed {args.docs}: {report.pages} pages, {report.chunks_total} chunks in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
        started = time.perf_counter()
        self.settings = settings
        self.runtime = Runtime(settings).start()
        gen = settings.generation
        print(f"runtime started in {time.perf_counter() - started:.1f} s (excluded): {settings.models.generator} "
              f"through {type(self.runtime.llm).__name__} on {self.runtime.llm.device}, max_batch_size "
              f"{self.runtime.batcher.max_batch_size}, batch_wait_ms {gen.batch_wait_ms}, queue_size {gen.queue_size}",
              flush=True)

    def app(self, name: str):
        from api.app import create_app
        from bench.naive_server import create_naive_app

        if name == "ours":
            return create_app(self.settings, runtime=self.runtime)
        return create_naive_app(self.settings, self.runtime)

    def count_tokens(self, text: str) -> int:
        return self.runtime.llm.count_tokens(text) if text else 0

    def generate_calls(self) -> int:
        """``generate`` calls the shared generator has made (batched or not)."""
        return self.runtime.llm.generate_calls

    def close(self) -> None:
        self.runtime.close()


class _ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 in a daemon thread; the context manager yields its base URL."""

    def __init__(self, app):
        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="bench-uvicorn", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process server did not start (see the log above)")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class _Running:
    """A server started elsewhere: nothing to start or stop."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc) -> None:
        pass


def _serve(url: str | None, local: LocalServers | None, name: str):
    if url:
        return _Running(url)
    assert local is not None
    return _ServerThread(local.app(name))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ingest(settings, docs: Path):
    from rag.runtime import Runtime

    with Runtime(settings).start_ingest() as runtime:
        return runtime.documents.sync_folder(docs)


def generator_token_counter() -> Callable[[str], int]:
    """Token counts under the generator's tokenizer (tokenizer only, no weights), for --url runs."""
    from transformers import AutoTokenizer

    from rag.models import resolve_generator
    from rag.settings import Settings

    tokenizer = AutoTokenizer.from_pretrained(resolve_generator(Settings().models))
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


# ---------------------------------------------------------------------------------------------- load


@dataclass
class Outcome:
    """One request: ``status`` is the HTTP status, "stream-error", "timeout" or an exception name."""

    status: int | str
    latency_s: float
    ttft_s: float | None = None
    tokens: int = 0
    abstained: bool | None = None
    decode_tok_s: float | None = None
    timings: dict[str, float] | None = None  # the server's seconds per stage (retrieve_s, evidence_s, generate_s)

    @property
    def ok(self) -> bool:
        return self.status == 200


def load_questions(path: Path, include_unanswerable: bool) -> list[str]:
    """Distinct questions of a qa.jsonl, in file order."""
    seen: dict[str, None] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if include_unanswerable or row.get("answerable", True):
            seen.setdefault(row["question"], None)
    if not seen:
        raise ValueError(f"no questions in {path}")
    return list(seen)


async def wait_ready(url: str, timeout_s: float) -> bool:
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5.0) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    return False


async def one_request(client, url: str, question: str, max_new_tokens: int, count_tokens) -> Outcome:
    """One streamed /v1/query, timed from sending to the ``done`` event."""
    import httpx

    body: dict[str, Any] = {"question": question, "stream": True}
    if max_new_tokens:
        body["max_new_tokens"] = max_new_tokens
    started = time.perf_counter()
    ttft = None
    pieces: list[str] = []
    final: dict[str, Any] | None = None
    failed = False
    try:
        async with client.stream("POST", f"{url}/v1/query", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return Outcome(response.status_code, time.perf_counter() - started)
            event = None
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = line[5:].strip()
                    if event == "token":
                        ttft = ttft if ttft is not None else time.perf_counter() - started
                        pieces.append(json.loads(data)["text"])
                    elif event == "final":
                        final = json.loads(data)
                    elif event == "error":
                        failed = True
                    elif event == "done":
                        break
    except httpx.TimeoutException:
        return Outcome("timeout", time.perf_counter() - started)
    except httpx.HTTPError as exc:
        return Outcome(type(exc).__name__, time.perf_counter() - started)
    latency = time.perf_counter() - started
    if failed or final is None:
        return Outcome("stream-error", latency, ttft)
    usage = final.get("usage") or {}
    tokens = usage.get("completion_tokens") or count_tokens("".join(pieces))
    timings = final.get("timings") or {}
    generate_s = timings.get("generate_s")
    return Outcome(
        200, latency, ttft, tokens, bool(final.get("abstained")),
        tokens / generate_s if generate_s and tokens else None, timings,
    )


async def run_level(
    url: str, questions: list[str], concurrency: int, n_requests: int, args, count_tokens,
    generate_calls: Callable[[], int] | None = None,
) -> dict:
    """``concurrency`` clients share ``n_requests`` requests; figures for the level.

    ``generate_calls`` (servers in this process) reads the generator's call counter, so the level also reports
    how many ``generate`` calls its requests took: fewer than requests is batching at work.
    """
    import httpx

    calls_before = generate_calls() if generate_calls else None

    outcomes: list[Outcome] = []
    issued = 0
    started = time.perf_counter()
    stop_sending = started + args.time_limit

    async def client_loop(client) -> None:
        nonlocal issued
        while issued < n_requests and time.perf_counter() < stop_sending:
            question = questions[issued % len(questions)]
            issued += 1
            outcomes.append(await one_request(client, url, question, args.max_new_tokens, count_tokens))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(args.request_timeout, connect=10.0)
    cut = False
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        try:
            async with asyncio.timeout(args.time_limit + args.request_timeout):
                await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        except TimeoutError:
            cut = True
    wall = time.perf_counter() - started
    level = summarize(outcomes, concurrency, wall, issued, cut)
    if generate_calls:
        level["generate_calls"] = generate_calls() - calls_before
    return level


def summarize(outcomes: list[Outcome], concurrency: int, wall: float, issued: int, cut: bool) -> dict[str, Any]:
    ok = [o for o in outcomes if o.ok]
    errors = Counter(str(o.status) for o in outcomes if not o.ok)
    if issued > len(outcomes):
        errors["unfinished at time limit"] += issued - len(outcomes)
    ttfts = [o.ttft_s for o in ok if o.ttft_s is not None]
    decode = [o.decode_tok_s for o in ok if o.decode_tok_s]
    tokens = sum(o.tokens for o in ok)
    return {
        "concurrency": concurrency, "requests": issued, "ok": len(ok), "abstained": sum(bool(o.abstained) for o in ok),
        "errors": dict(errors), "cut_at_time_limit": cut, "wall_s": wall,
        "requests_per_s": len(ok) / wall if wall else 0.0,
        "latency_s": percentiles([o.latency_s for o in ok]),
        "ttft_s": percentiles(ttfts), "streamed": len(ttfts),
        "output_tokens": tokens, "output_tokens_per_s": tokens / wall if wall else 0.0,
        "decode_tokens_per_s_median": percentiles(decode, (50,))["p50"],
        # Where a request's time went, by the server's own timings: the median over the answered requests that
        # ran each stage (requests the relevance gate turned away have no evidence_s or generate_s).
        "server_stage_s_p50": {
            stage: percentiles([o.timings[stage] for o in ok if o.timings and stage in o.timings], (50,))["p50"]
            for stage in ("retrieve_s", "evidence_s", "generate_s", "total_s")
        },
    }


def print_level(level: dict[str, Any]) -> None:
    lat, ttft = level["latency_s"], level["ttft_s"]
    errors = ", ".join(f"{k}: {v}" for k, v in level["errors"].items()) or "none"
    print(f"   c={level['concurrency']:<3} {level['ok']}/{level['requests']} ok ({level['abstained']} abstained) "
          f"in {level['wall_s']:.1f} s | {fmt(level['requests_per_s'], 2)} req/s | latency p50/p95/p99 "
          f"{fmt(lat['p50'], 2)}/{fmt(lat['p95'], 2)}/{fmt(lat['p99'], 2)} s | first token p50/p95/p99 "
          f"{fmt(ttft['p50'], 2)}/{fmt(ttft['p95'], 2)}/{fmt(ttft['p99'], 2)} s | {fmt(level['output_tokens_per_s'])} "
          f"output tok/s (per request {fmt(level['decode_tokens_per_s_median'])}) | errors: {errors}")
    stages = " ".join(f"{k[:-2]} {fmt(v, 2)}" for k, v in level["server_stage_s_p50"].items())
    calls = f" | generate calls {level['generate_calls']}" if "generate_calls" in level else ""
    print(f"          server seconds p50: {stages}{calls}", flush=True)


def compare(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Requests/s ratios and both p95 latencies per concurrency level: ours against naive (each backend's), and
    with several backends each later one's ``ours`` against the first's (the engine against PyTorch)."""
    pairs = [(label, label.replace("ours", "naive", 1)) for label in results if label.startswith("ours")]
    ours = [label for label in results if label.startswith("ours/")]
    pairs += [(label, ours[0]) for label in ours[1:]]
    rows = []
    for label, against in pairs:
        if against not in results:
            continue
        other = {level["concurrency"]: level for level in results[against]}
        for level in results[label]:
            base = other.get(level["concurrency"])
            if base is None:
                continue
            rows.append({
                "concurrency": level["concurrency"], "server": label, "against": against,
                "rps_ratio": level["requests_per_s"] / base["requests_per_s"] if base["requests_per_s"] else None,
                "p95_s": level["latency_s"]["p95"], "p95_against_s": base["latency_s"]["p95"],
            })
    return rows


if __name__ == "__main__":
    sys.exit(main())
