"""Evaluation: question sets in, a typed report out.

- ``dataset``: load an eval set (docs/*.pdf + qa.jsonl) and draw stratified samples.
- ``metrics``: score one prediction and aggregate (``PRIMARY_METRIC`` = grounded accuracy).
- ``records``: ``QuestionRecord`` per question, ``EvalResult`` per pipeline run; the ``Pipeline`` protocol.
- ``evaluator``: ``Evaluator`` asks a pipeline every question, under a time limit, and scores the answers.
- ``pipelines``: ``OursPipeline`` (in process), ``HttpPipeline`` (a running rag-serve), ``open_gates``.
- ``baseline``: the LangChain-docs RAG on the same models, for comparison.
- ``sweep``: re-score an open-gates run over a grid of thresholds (``Sweep``, ``best_point``).
- ``report``: ``RunOptions``, ``SetReport``, ``EvalReport``; ``render`` writes report.json/.md and plots.
- ``run``: ``evaluate_sets``, the whole rag-eval run over several sets.
"""

from rag.evaluation.dataset import EvalSet, QAItem, load_set, sample
from rag.evaluation.evaluator import Evaluator
from rag.evaluation.metrics import PRIMARY_METRIC
from rag.evaluation.pipelines import HttpPipeline, OursPipeline, open_gates
from rag.evaluation.records import EvalResult, Pipeline, QuestionRecord
from rag.evaluation.report import EvalReport, RunOptions, SetReport
from rag.evaluation.sweep import Sweep, SweepPoint, apply_thresholds, best_point, sweep_thresholds

__all__ = [
    "PRIMARY_METRIC", "EvalReport", "EvalResult", "EvalSet", "Evaluator", "HttpPipeline", "OursPipeline", "Pipeline",
    "QAItem", "QuestionRecord", "RunOptions", "SetReport", "Sweep", "SweepPoint", "apply_thresholds", "best_point",
    "load_set", "open_gates", "sample", "sweep_thresholds",
]
