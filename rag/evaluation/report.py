"""The evaluation report as typed objects: what was asked (``RunOptions``), and per set the sample, the ingest,
each pipeline's ``EvalResult`` and the sweep (``SetReport``), under one ``EvalReport``.

``EvalReport.to_dict()`` is the JSON written as report.json (``rag.evaluation.render`` turns it into
Markdown and plots); ``summary()`` is the table a run prints; ``below_floor`` is the CI check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import UsageError
from rag.evaluation.dataset import EvalSet, QAItem
from rag.evaluation.evaluator import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_S
from rag.evaluation.metrics import PRIMARY_METRIC
from rag.evaluation.records import EvalResult
from rag.evaluation.sweep import Sweep
from rag.types import IngestReport

PIPELINES = ("ours", "baseline")

# Metrics in [0, 1], in the order of the README table; plotted as bars.
RATE_METRICS = (
    PRIMARY_METRIC, "correct_rate", "hallucination_rate", "abstention_precision", "abstention_recall", "em", "f1",
    "recall@1", "recall@5", "recall@10", "mrr",
)
COUNT_METRICS = ("n", "n_answerable", "n_unanswerable", "answered", "abstained", "failed")
LATENCY_METRICS = ("latency_p50_s", "latency_p95_s")


@dataclass(frozen=True)
class RunOptions:
    """How to evaluate: which pipelines, on how many questions, with what limits; checked on construction
    (UsageError naming the option).

    ``url`` evaluates ours through a running service instead of in process (``api_key`` for it, never
    written to the report); ``sweep`` adds an open-gates run of ours re-scored over the threshold grid;
    ``partial_dir`` receives each question's record as it finishes; ``index_root`` holds one index per set.
    """

    pipelines: tuple[str, ...] = PIPELINES
    limit: int | None = None
    seed: int = 0
    concurrency: int = DEFAULT_CONCURRENCY
    timeout_s: float = DEFAULT_TIMEOUT_S
    url: str | None = None
    api_key: str | None = None
    index_root: Path = Path(".rag-eval")
    sweep: bool = False
    open_gates: bool = False  # ours runs with every gate open, recording confidence features (evals.calibrate)
    partial_dir: Path | None = None

    def __post_init__(self) -> None:
        unknown = [p for p in self.pipelines if p not in PIPELINES]
        if unknown or not self.pipelines:
            raise UsageError(f"pipelines must be some of {', '.join(PIPELINES)}, got {list(self.pipelines)}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be >= 1, got {self.limit}")
        if self.concurrency < 1:
            raise UsageError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.timeout_s <= 0:
            raise UsageError(f"--timeout must be > 0 seconds, got {self.timeout_s}")
        if self.sweep and self.url:
            raise UsageError("--sweep runs ours in process with the gates open: drop --url")
        if self.open_gates and self.url:
            raise UsageError("--open-gates runs ours in process: drop --url")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise UsageError(f"--url must start with http:// or https://, got {self.url!r}")

    @property
    def ours_in_process(self) -> bool:
        return "ours" in self.pipelines and not self.url

    @property
    def needs_index(self) -> bool:
        """Whether ours runs in this process, over a per-set index that must be ingested first."""
        return self.ours_in_process or self.sweep

    @property
    def needs_runtime(self) -> bool:
        """Whether models load in this process (ours in process, the sweep, or the baseline)."""
        return self.needs_index or "baseline" in self.pipelines

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipelines": list(self.pipelines), "limit": self.limit, "seed": self.seed,
            "concurrency": self.concurrency, "timeout_s": self.timeout_s, "url": self.url,
            "index_root": str(self.index_root), "sweep": self.sweep, "open_gates": self.open_gates,
        }


@dataclass
class SetReport:
    """One set: the sampled questions, the ingest of its index, each pipeline's result, the sweep."""

    name: str
    root: Path
    questions_in_set: int
    items: tuple[QAItem, ...]
    limit: int | None
    seed: int
    index: Path | None = None
    ingest: IngestReport | None = None
    results: dict[str, EvalResult] = field(default_factory=dict)
    sweep: Sweep | None = None

    @classmethod
    def of(cls, eval_set: EvalSet, items: Sequence[QAItem], options: RunOptions, index: Path | None) -> "SetReport":
        return cls(
            name=eval_set.name, root=eval_set.root, questions_in_set=len(eval_set.items), items=tuple(items),
            limit=options.limit, seed=options.seed, index=index,
        )

    def to_dict(self) -> dict[str, Any]:
        answerable = sum(item.answerable for item in self.items)
        return {
            "name": self.name,
            "root": str(self.root),
            "questions_in_set": self.questions_in_set,
            "sample": {
                "n": len(self.items), "answerable": answerable, "unanswerable": len(self.items) - answerable,
                "limit": self.limit, "seed": self.seed,
            },
            "index": None if self.index is None else str(self.index),
            "ingest": None if self.ingest is None else asdict(self.ingest),
            "results": {name: result.to_dict() for name, result in self.results.items()},
            "sweep": None if self.sweep is None else self.sweep.to_dict(),
        }


@dataclass
class EvalReport:
    """A whole rag-eval run: when, how, on what machine and settings, and every set."""

    date: str
    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]  # Settings.model_dump(mode="json") of the run
    run: RunOptions
    sets: list[SetReport] = field(default_factory=list)
    primary_metric: str = PRIMARY_METRIC

    def to_dict(self) -> dict[str, Any]:
        return {
            "primary_metric": self.primary_metric,
            "date": self.date,
            "command": self.command,
            "machine": self.machine,
            "settings": self.settings,
            "run": self.run.to_dict(),
            "sets": [entry.to_dict() for entry in self.sets],
        }

    def below_floor(self, floor: float, pipeline: str = "ours") -> list[tuple[str, float]]:
        """(set name, score) of every set where ``pipeline``'s primary metric is below ``floor``."""
        return [
            (entry.name, entry.results[pipeline].primary)
            for entry in self.sets
            if pipeline in entry.results and entry.results[pipeline].primary < floor
        ]

    def summary(self) -> str:
        """The per-set metric tables, as printed at the end of a run."""
        blocks = []
        for entry in self.sets:
            names = list(entry.results)
            metric_dicts = [entry.results[n].metrics for n in names]
            rows = [["metric", *names]]
            rows += [[m, *(format_metric(m, d.get(m)) for d in metric_dicts)] for m in metric_order(metric_dicts)]
            widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
            lines = [f"{entry.name} ({len(entry.items)} questions)"]
            lines += [
                "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                for row in rows
            ]
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)


def metric_order(metric_dicts: Sequence[dict[str, Any]]) -> list[str]:
    """Primary metric first, then rates, latency and counts, then anything else in first-seen order."""
    known = [*RATE_METRICS, *LATENCY_METRICS, *COUNT_METRICS]
    present: list[str] = []
    for metrics in metric_dicts:
        present += [m for m in metrics if m not in present]
    return [m for m in known if m in present] + [m for m in present if m not in known]


def format_metric(name: str, value: Any) -> str:
    """A metric for a table cell: counts as integers, latencies in seconds, rates with 3 decimals."""
    if value is None:
        return "-"
    if name in COUNT_METRICS or isinstance(value, bool) or (isinstance(value, int) and name not in RATE_METRICS):
        return str(int(value))
    if name in LATENCY_METRICS:
        return f"{float(value):.2f} s"
    return f"{float(value):.3f}"
