"""Bursts of concurrent questions against rag-serve: admission control under overload, on a quiet or a busy machine.

For each burst size, that many ``POST /v1/query`` requests (non-streamed, on-topic questions from ``--questions``)
are sent at once; each is timed until its status arrives. Then one more question, the probe, is sent on its own
after the burst has been answered. The probe is also asked alone before the bursts: its latency there is the
baseline the one after a burst is held to.

``--busy`` runs a CPU hog beside the server during the bursts (one process per core spinning in a loop:
``bench.cpu_hog``), what another job on a shared machine does. The probe is then asked alone twice before the
bursts: on the quiet machine, and beside the hog (the baseline).

Target (issue 24): every burst request answered 200 or 503 with a Retry-After header, no 504, no transport error,
every 200 within generation.request_timeout_s + 5 s; the probe after each burst answered 200 in under 2x its
baseline. Reported besides: how long each admitted request took against its time limit (the client's total, and
the generation part the limit bounds), and the Retry-After values given against the time the queue really took
to drain (from the 503 to the end of the burst's last admitted request).

The server is started here (uvicorn in a thread on 127.0.0.1, over ``--index`` or an index built from ``--docs``,
default settings) or reached at ``--url`` (loopback only). On the team's shared machine the whole run is a
CPU-heavy job: ``flock /work/cpu.lock python -m bench.burst ...`` (the hog included).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench._common import machine_info, parse_int_list, print_header, write_json
from bench.cpu_hog import CpuHog
from bench.serve import DEFAULT_QUESTIONS, LocalServers, _Running, _ServerThread, load_questions, wait_ready

EPILOG = """\
examples:
  python -m bench.burst --docs ../shared/eval/squad2-dev/docs                   bursts of 32 and 64, quiet machine
  flock /work/cpu.lock python -m bench.burst --index IDX --busy --json bench-out/burst-busy.json
  python -m bench.burst --url http://127.0.0.1:8000 --timeout 120

exit codes: 0 every request met the target; 1 some did not (listed); 2 usage error; 3 the server never got ready.
"""
PROBE_FACTOR = 2.0  # the probe after a burst must answer within this many times its baseline latency


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
    parser.add_argument("--busy", action="store_true",
                        help="run a CPU hog (one spinning process per core) beside the server during the bursts")
    parser.add_argument("--hog-processes", type=int, help="processes of the --busy hog (default: one per core)")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser


async def _ask(client, url: str, question: str, origin: float) -> dict[str, Any]:
    started = time.monotonic()
    outcome: dict[str, Any] = {"start_s": round(started - origin, 2)}
    try:
        response = await client.post(f"{url}/v1/query", json={"question": question})
        outcome.update(status=response.status_code, retry_after=response.headers.get("retry-after"))
        if response.status_code != 200:
            outcome["detail"] = str(response.json().get("detail"))[:300] if _is_json(response) else response.text[:300]
        if response.status_code == 200:
            timings = response.json().get("timings", {})
            outcome["generate_s"] = round(timings.get("generate_s", 0.0), 2)  # queue wait + generation
    except Exception as exc:  # noqa: BLE001 - a transport failure is an outcome to report, not a crash
        outcome.update(status=f"error: {type(exc).__name__}", retry_after=None)
    ended = time.monotonic()
    outcome.update(seconds=round(ended - started, 2), end_s=round(ended - origin, 2))
    return outcome


def _is_json(response) -> bool:
    return response.headers.get("content-type", "").startswith("application/json")


def _estimate(local: LocalServers | None) -> dict[str, Any] | None:
    """The admission estimate of the server started here (rag.generation.admission.CostModel), as it stands."""
    batcher = getattr(getattr(local, "runtime", None), "batcher", None)
    costs = getattr(batcher, "costs", None)
    if costs is None:  # no server here, or a batcher without a cost model (an older one)
        return None
    return {
        "prefill_ms_per_token": round(1000 * costs.prefill_seconds_per_token, 3)
        if costs.prefill_seconds_per_token is not None else None,
        "decode_ms_per_token": round(1000 * costs.decode_seconds_per_token, 2)
        if costs.decode_seconds_per_token is not None else None,
        "expected_tokens_by_budget": {b: round(t, 1) for b, t in sorted(costs.completion_by_budget.items())},
        "batches_measured": costs.batches_measured, "refused_after_admission": batcher.refused_late,
    }


def _judge(outcome: dict[str, Any], limit: float) -> str | None:
    """Why a burst request misses the target, or None."""
    if outcome["status"] not in (200, 503):
        return f"status {outcome['status']}"
    if outcome["status"] == 503 and not outcome["retry_after"]:
        return "503 without Retry-After"
    if outcome["seconds"] > limit:
        return f"answered after {outcome['seconds']} s, over {limit:g} s"
    return None


def _retry_after_report(outcomes: list[dict[str, Any]], drained_s: float) -> dict[str, Any]:
    """Retry-After given to each 503 against the time the queue really took to drain after it."""
    pairs = [
        (float(o["retry_after"]), round(max(0.0, drained_s - o["end_s"]), 1))
        for o in outcomes if o["status"] == 503 and o["retry_after"]
    ]
    if not pairs:
        return {"count": 0}
    given, actual = [p[0] for p in pairs], [p[1] for p in pairs]
    return {
        "count": len(pairs), "given_median_s": statistics.median(given), "given_max_s": max(given),
        "drain_median_s": statistics.median(actual), "drain_max_s": max(actual),
        # A client that waits as told finds the queue drained: Retry-After at least the real drain time.
        "long_enough": sum(g >= a for g, a in pairs), "pairs": pairs,
    }


async def _burst(url: str, questions: list[str], size: int, limit: float, probe: str, baseline_s: float,
                 request_timeout: float) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(timeout=limit + 60) as client:
        origin = time.monotonic()
        asks = (_ask(client, url, questions[i % len(questions)], origin) for i in range(size))
        outcomes = await asyncio.gather(*asks)
        wall = time.monotonic() - origin
        after = await _ask(client, url, probe, time.monotonic())
    admitted = [o for o in outcomes if o["status"] != 503]
    drained_s = max((o["end_s"] for o in admitted), default=0.0)
    misses = [(i, why) for i, o in enumerate(outcomes) if (why := _judge(o, limit))]
    after_miss = None
    if after["status"] != 200:
        after_miss = f"status {after['status']}"
    elif after["seconds"] > PROBE_FACTOR * baseline_s:
        after_miss = f"{after['seconds']} s, over {PROBE_FACTOR:g} x its baseline {baseline_s:.2f} s"
    answered = [o for o in outcomes if o["status"] == 200]
    return {
        "size": size, "wall_s": round(wall, 1), "statuses": dict(Counter(str(o["status"]) for o in outcomes)),
        "slowest_s": max(o["seconds"] for o in outcomes),
        "admitted": {
            "count": len(admitted), "request_timeout_s": request_timeout,
            "seconds_max": max((o["seconds"] for o in answered), default=None),
            "seconds_median": statistics.median([o["seconds"] for o in answered]) if answered else None,
            "generate_s_max": max((o.get("generate_s", 0.0) for o in answered), default=None),
        },
        "drained_s": drained_s, "retry_after": _retry_after_report(outcomes, drained_s),
        "outcomes": outcomes, "misses": misses,
        "after_burst": after, "baseline_s": baseline_s, "after_burst_miss": after_miss,
    }


async def _alone(url: str, question: str, limit: float) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(timeout=limit + 60) as client:
        return await _ask(client, url, question, time.monotonic())


def _print_burst(result: dict[str, Any]) -> None:
    admitted, retry = result["admitted"], result["retry_after"]
    after = result["after_burst"]
    print(f"burst {result['size']}: {result['statuses']} in {result['wall_s']} s; admitted {admitted['count']}: "
          f"slowest {admitted['seconds_max']} s (generation part {admitted['generate_s_max']} s) against a "
          f"{admitted['request_timeout_s']:g} s limit; queue drained at {result['drained_s']} s", flush=True)
    if retry["count"]:
        print(f"  Retry-After: median {retry['given_median_s']:g} s (max {retry['given_max_s']:g}) against a real "
              f"drain of median {retry['drain_median_s']:g} s (max {retry['drain_max_s']:g}); long enough for "
              f"{retry['long_enough']} of {retry['count']}")
    print(f"  probe after it: {after['status']} in {after['seconds']} s (baseline {result['baseline_s']:.2f} s); "
          f"misses: {len(result['misses']) + bool(result['after_burst_miss'])}", flush=True)
    if result.get("estimate_after"):
        print(f"  estimate after it: {result['estimate_after']}")
    reasons = Counter(o.get("detail", "")[:40] for o in result["outcomes"] if o["status"] == 503)
    if reasons:
        print(f"  503 reasons: {dict(reasons)}")
    for index, why in result["misses"]:
        print(f"  request {index}: {why}")
    if result["after_burst_miss"]:
        print(f"  probe after the burst: {result['after_burst_miss']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.url or args.index or args.docs):
        print("python -m bench.burst: error: give --url, --index or --docs", file=sys.stderr)
        return 2
    if args.hog_processes is not None and (args.hog_processes < 1 or not args.busy):
        print("python -m bench.burst: error: --hog-processes needs --busy and a count >= 1", file=sys.stderr)
        return 2
    questions = load_questions(args.questions, include_unanswerable=False)
    probe, questions = questions[-1], questions[:-1] or questions  # the probe is not one of the burst's
    with tempfile.TemporaryDirectory() as tmp:
        local = None if args.url else LocalServers(SimpleNamespace(index=args.index, docs=args.docs), Path(tmp))
        timeout = args.timeout or (local.settings.generation.request_timeout_s if local else 120.0)
        limit = timeout + 5.0
        info = machine_info()
        print_header("bench.burst", info)
        results, baselines = [], {}
        try:
            with (_Running(args.url) if args.url else _ServerThread(local.app("ours"))) as url:
                if not asyncio.run(wait_ready(url, 120)):
                    print("the server never became ready", file=sys.stderr)
                    return 3
                asyncio.run(_alone(url, probe, limit))  # a first answer: loads lazy parts, measures the rates
                baselines["quiet"] = asyncio.run(_alone(url, probe, limit))
                print(f"probe alone, quiet machine: {baselines['quiet']['status']} in "
                      f"{baselines['quiet']['seconds']} s", flush=True)
                with CpuHog(args.hog_processes) if args.busy else nullcontext() as hog:
                    if hog is not None:
                        print(f"CPU hog: {hog.processes} spinning processes", flush=True)
                        baselines["busy"] = asyncio.run(_alone(url, probe, limit))
                        print(f"probe alone, beside the hog: {baselines['busy']['status']} in "
                              f"{baselines['busy']['seconds']} s", flush=True)
                    baseline = baselines["busy" if hog is not None else "quiet"]["seconds"]
                    for size in args.bursts:
                        result = asyncio.run(_burst(url, questions, size, limit, probe, baseline, timeout))
                        result["estimate_after"] = _estimate(local)
                        results.append(result)
                        _print_burst(result)
        finally:
            if local is not None:
                local.close()
    write_json(args.json, {
        "machine": info, "busy": args.busy, "limit_s": limit, "baselines": baselines, "bursts": results,
    })
    failed = any(r["misses"] or r["after_burst_miss"] for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
