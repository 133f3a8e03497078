"""Measure follow-up rewriting on written multi-turn cases: top-k gold-page retrieval for the last message as
it is, the rules rewrite, the generator's rewrite and the hand-written standalone question; with --answers, the
answers for the last message and for the rewrite.

examples:
  python -m evals.followup                                  index samples/docs in a temporary folder, retrieval only
  python -m evals.followup --index .rag-sample --answers --json out/followup.json
  python -m evals.followup --no-generator                   last / rules / reference only (no generator loaded)

exit codes: 0 done; 2 usage error (a missing cases file or folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from rag.evaluation.followups import evaluate_followups, load_cases
from rag.runtime import Runtime
from rag.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evals.followup", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cases", type=Path, default=REPO / "tests" / "data" / "followup_cases.json")
    parser.add_argument("--index", type=Path, help="an index of --docs (default: built in a temporary folder)")
    parser.add_argument("--docs", type=Path, default=REPO / "samples" / "docs")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--answers", action="store_true", help="also answer (the full pipeline, slow on a CPU)")
    parser.add_argument("--no-generator", action="store_true", help="do not load the generator")
    parser.add_argument("--json", type=Path, help="write the per-case results here")
    args = parser.parse_args(argv)
    if not args.cases.is_file() or (args.index is None and not args.docs.is_dir()):
        print(f"error: {args.cases if not args.cases.is_file() else args.docs} not found", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        index = args.index or Path(tmp) / "index"
        settings = Settings().with_overrides({"index": {"path": index}})
        if args.index is None:
            with Runtime(settings).start_ingest() as runtime:
                runtime.documents.sync_folder(args.docs)
        with Runtime(settings).start(with_generator=not args.no_generator) as runtime:
            result = evaluate_followups(runtime, load_cases(args.cases), args.top_k, args.answers, progress=_show)
    print(json.dumps(result["total"], indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0


def _show(row: dict) -> None:
    print(row["id"], "top-k", {k: int(v) for k, v in row["hit"].items()}, "top-1", {k: int(v) for k, v in row["hit1"].items()},
          "right", row.get("correct"), json.dumps(row["asked"], ensure_ascii=False), row.get("answers", ""), flush=True)


if __name__ == "__main__":
    sys.exit(main())
