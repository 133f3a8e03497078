"""The CI evaluation: a fixed 40-question sample of squad2-dev and a floor on ours' grounded accuracy.

``--limit 40 --seed 0`` with the stratified sampler always draws the same 40 questions, 20 answerable and 20
unanswerable. The run fails (exit 1) when ours' grounded accuracy on them is below ``CI_FLOOR``.

    python -m evals.ci_sample                                   # in process, squad2-dev from ../shared/eval
    python -m evals.ci_sample --squad /data/squad2-dev --out ci-report
    python -m evals.ci_sample --url http://127.0.0.1:8000       # against a running rag-serve

is the same as

    rag-eval --set ../shared/eval/squad2-dev --limit 40 --seed 0 --pipeline ours --min-grounded-accuracy 0.55

Any argument other than ``--squad`` is passed on to ``rag-eval``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evals import cli

CI_SET = Path(__file__).resolve().parents[2] / "shared" / "eval" / "squad2-dev"
CI_LIMIT = 40
CI_SEED = 0
# The shipped confidence model on this sample, computed from the gates-open records that contain it
# (docs/evaluation.md, "The CI sample"): grounded accuracy 0.600 (4 answered; hallucination rate 0.0); the real
# gated run in the test suite is quoted in the closing note. The floor allows two questions of drift (a GPU
# generates in bf16) and stays above 0.50, what abstaining on everything scores here.
CI_FLOOR = 0.55


def ci_argv(set_dir: Path = CI_SET, extra: list[str] | None = None) -> list[str]:
    """The rag-eval arguments of the CI run."""
    return [
        "--set", str(set_dir), "--limit", str(CI_LIMIT), "--seed", str(CI_SEED), "--pipeline", "ours",
        "--min-grounded-accuracy", str(CI_FLOOR), *(extra or []),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evals.ci_sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: rag-eval's (0 at or above the floor; 1 below it; 2 usage error or a missing set; "
        "3 index; 4 model).",
    )
    parser.add_argument("--squad", type=Path, default=CI_SET, help=f"the squad2-dev set folder (default: {CI_SET})")
    args, extra = parser.parse_known_args(argv)
    return cli.main(ci_argv(args.squad, extra))


if __name__ == "__main__":
    sys.exit(main())
