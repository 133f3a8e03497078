"""Bursts of concurrent questions against rag-serve: admission control under overload.

For each burst size, that many ``POST /v1/query`` requests (non-streamed, on-topic questions from ``--questions``)
are sent at once; each is timed until its status arrives. Then one more question is sent on its own, after the
burst has been answered. The target (issue #11): every burst request answered 200, 503 (with a Retry-After
header) or 504 within generation.request_timeout_s + 5 s; the question after the burst answered 200 within the
same limit. The server is started here (uvicorn in a thread on 127.0.0.1, over ``--index`` or an index built
from ``--docs``, default settings) or reached at ``--url`` (loopback only).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench._common import machine_info, parse_int_list, print_header, write_json
from bench.serve import DEFAULT_QUESTIONS, LocalServers, _Running, _ServerThread, load_questions, wait_ready

EPILOG = """\
examples:
  python -m bench.burst --docs ../shared/eval/squad2-dev/docs                   bursts of 32 and 64
  python -m bench.burst --index rag-index --bursts 8 --json bench-out/burst.json
  python -m bench.burst --url http://127.0.0.1:8000 --timeout 120

exit codes: 0 every request met the target; 1 some did not (listed); 2 usage error; 3 the server never got ready.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.burst", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running rag-serve on a loopback address")
    where.add_argument("--index", type=Path, help="serve this index in process")
    where.add_argument("--docs", type=Path, help="index this folder first (in a temporary folder), then serve it")
    parser.add_argument("--bursts", type=parse_int_list, default=[32, 64], help="burst sizes (default 32,64)")
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS, help="qa.jsonl to draw questions from")
    parser.add_argument("--timeout", type=float, help="the server's request_timeout_s (default: from settings)")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser


async def _ask(client, url: str, question: str) -> dict[str, Any]:
    started = time.monotonic()
    try:
        response = await client.post(f"{url}/v1/query", json={"question": question})
        status, retry_after = response.status_code, response.headers.get("retry-after")
    except Exception as exc:  # noqa: BLE001 - a transport failure is an outcome to report, not a crash
        status, retry_after = f"error: {type(exc).__name__}", None
    return {"status": status, "seconds": round(time.monotonic() - started, 2), "retry_after": retry_after}


def _judge(outcome: dict[str, Any], limit: float) -> str | None:
    """Why ``outcome`` misses the target, or None."""
    if outcome["status"] not in (200, 503, 504):
        return f"status {outcome['status']}"
    if outcome["status"] == 503 and not outcome["retry_after"]:
        return "503 without Retry-After"
    if outcome["seconds"] > limit:
        return f"answered after {outcome['seconds']} s, over {limit:g} s"
    return None


async def _burst(url: str, questions: list[str], size: int, limit: float) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(timeout=limit + 60) as client:
        started = time.monotonic()
        outcomes = await asyncio.gather(*(_ask(client, url, questions[i % len(questions)]) for i in range(size)))
        wall = time.monotonic() - started
        after = await _ask(client, url, questions[size % len(questions)])
    misses = [(i, why) for i, o in enumerate(outcomes) if (why := _judge(o, limit))]
    after_miss = _judge(after, limit) or (None if after["status"] == 200 else f"status {after['status']}")
    return {
        "size": size, "wall_s": round(wall, 1), "statuses": dict(Counter(str(o["status"]) for o in outcomes)),
        "slowest_s": max(o["seconds"] for o in outcomes), "outcomes": outcomes, "misses": misses,
        "after_burst": after, "after_burst_miss": after_miss,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.url or args.index or args.docs):
        print("python -m bench.burst: error: give --url, --index or --docs", file=sys.stderr)
        return 2
    questions = load_questions(args.questions, include_unanswerable=False)
    with tempfile.TemporaryDirectory() as tmp:
        local = None if args.url else LocalServers(SimpleNamespace(index=args.index, docs=args.docs), Path(tmp))
        timeout = args.timeout or (local.settings.generation.request_timeout_s if local else 120.0)
        limit = timeout + 5.0
        info = machine_info()
        print_header("bench.burst", info)
        results = []
        try:
            with (_Running(args.url) if args.url else _ServerThread(local.app("ours"))) as url:
                if not asyncio.run(wait_ready(url, 120)):
                    print("the server never became ready", file=sys.stderr)
                    return 3
                for size in args.bursts:
                    result = asyncio.run(_burst(url, questions, size, limit))
                    results.append(result)
                    print(f"burst {size}: {result['statuses']} in {result['wall_s']} s (slowest {result['slowest_s']} s); "
                          f"after it: {result['after_burst']['status']} in {result['after_burst']['seconds']} s; "
                          f"misses: {len(result['misses']) + bool(result['after_burst_miss'])}", flush=True)
                    for index, why in result["misses"]:
                        print(f"  request {index}: {why}")
                    if result["after_burst_miss"]:
                        print(f"  question after the burst: {result['after_burst_miss']}")
        finally:
            if local is not None:
                local.close()
    write_json(args.json, {"machine": info, "limit_s": limit, "bursts": results})
    failed = any(r["misses"] or r["after_burst_miss"] for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
