"""Writing an evaluation report: ``report.json``, ``report.md`` and PNG plots, all from one report dict.

The dict (``rag.evaluation.report.EvalReport.to_dict()``, or a saved report.json) has ``primary_metric``, ``date``, ``command``, ``machine``, ``settings``,
``run`` and ``sets``: per set its ``name``, ``questions_in_set``, ``sample``, ``results`` (pipeline name ->
``{"n", "metrics", "wall_s", "records"}``) and ``sweep`` (None, or the threshold grid of an open-gates run).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rag.evaluation.metrics import PRIMARY_METRIC
from rag.evaluation.report import RATE_METRICS, EvalReport, format_metric, metric_order
from rag.files import slug

def write_report(out_dir: Path, report: EvalReport | dict[str, Any]) -> list[Path]:
    """Write report.json, report.md, one metrics PNG per set and one sweep PNG and JSON per swept set.

    Returns the paths written. The figures use matplotlib's Agg backend (no display needed).
    """
    if isinstance(report, EvalReport):
        report = report.to_dict()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in report["sets"]:
        name = slug(entry["name"])
        metrics = {pipeline: result["metrics"] for pipeline, result in entry["results"].items()}
        if metrics:  # a checkpoint may come before a set's first pipeline finished
            written.append(plot_metrics(entry["name"], metrics, out_dir / f"metrics-{name}.png"))
        if entry.get("sweep"):
            sweep_json = out_dir / f"sweep-{name}.json"
            sweep_json.write_text(json.dumps(_sweep_without_records(entry["sweep"]), indent=2))
            written += [sweep_json, plot_sweep(entry["name"], entry["sweep"], out_dir / f"sweep-{name}.png")]
    report_json = out_dir / "report.json"
    report_json.write_text(json.dumps(report, indent=2, allow_nan=False))
    report_md = out_dir / "report.md"
    report_md.write_text(render_markdown(report))
    return [report_json, report_md, *written]


# ------------------------------------------------------------------------------------------- markdown


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: run facts, then per set a table with the pipelines side by side."""
    machine = report.get("machine", {})
    run = report.get("run", {})
    settings = report.get("settings", {})
    lines = [
        "# Evaluation report",
        "",
        f"- date: {report.get('date', '?')}",
        f"- command: `{report.get('command', '?')}`",
        f"- machine: {describe_machine(machine)}",
        f"- sample: limit {run.get('limit')}, seed {run.get('seed')}; concurrency {run.get('concurrency')}, "
        f"per-question timeout {run.get('timeout_s')} s",
        f"- gates: retrieval.min_relevance {settings.get('retrieval', {}).get('min_relevance')}, "
        f"generation.min_confidence {settings.get('generation', {}).get('min_confidence')}; "
        f"max_new_tokens {settings.get('generation', {}).get('max_new_tokens')}; "
        f"top_k {settings.get('retrieval', {}).get('top_k')} ({settings.get('retrieval', {}).get('mode')})",
        f"- primary metric: **{report.get('primary_metric', PRIMARY_METRIC)}**; the full settings and every "
        "question's record are in report.json",
        "",
    ]
    for entry in report["sets"]:
        lines += _set_section(entry)
    return "\n".join(lines).rstrip() + "\n"


def describe_machine(machine: dict[str, Any]) -> str:
    parts = [str(machine.get("platform", "?")), f"{machine.get('cpu_count', '?')} CPUs"]
    parts.append(f"torch {machine.get('torch', '?')} on {machine.get('device', '?')}")
    if machine.get("gpu"):
        parts.append(str(machine["gpu"]))
    return ", ".join(parts)


def _set_section(entry: dict[str, Any]) -> list[str]:
    results = entry["results"]
    names = list(results)
    sample = entry.get("sample", {})
    lines = [
        f"## {entry['name']}",
        "",
        f"{sample.get('n', '?')} of {entry.get('questions_in_set', '?')} questions "
        f"({sample.get('answerable', '?')} answerable, {sample.get('unanswerable', '?')} unanswerable)."
        + "".join(f" {name}: {results[name].get('wall_s', 0):.0f} s wall." for name in names),
        "",
        "| metric | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---:" for _ in names) + " |",
    ]
    for metric in metric_order([results[name]["metrics"] for name in names]):
        cells = [format_metric(metric, results[name]["metrics"].get(metric)) for name in names]
        label = f"**{metric}**" if metric == PRIMARY_METRIC else metric
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"![metrics]({'metrics-' + slug(entry['name']) + '.png'})", ""]
    sweep = entry.get("sweep")
    if sweep:
        lines += _sweep_section(entry["name"], sweep)
    return lines


def _sweep_section(set_name: str, sweep: dict[str, Any]) -> list[str]:
    configured, best = sweep["configured"], sweep["best"]
    at_configured = sweep.get("at_configured", {})
    rows = [("configured", configured, at_configured), ("best", best, best.get("metrics", {}))]
    lines = [
        f"### Abstention trade-off ({set_name}, one run with the gates open, re-scored offline)",
        "",
        "| thresholds | min_relevance | min_confidence | grounded_accuracy | hallucination_rate | answered | "
        "abstention_recall |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, point, metrics in rows:
        lines.append(
            f"| {label} | {point['min_relevance']:.2f} | {point['min_confidence']:.2f} | "
            f"{format_metric(PRIMARY_METRIC, metrics.get(PRIMARY_METRIC))} | "
            f"{format_metric('hallucination_rate', metrics.get('hallucination_rate'))} | "
            f"{format_metric('answered', metrics.get('answered'))} | "
            f"{format_metric('abstention_recall', metrics.get('abstention_recall'))} |"
        )
    ties = sweep.get("best_ties", 1)
    span = sweep.get("best_span")
    spans = "" if not span else (
        f" (min_relevance {span['min_relevance'][0]:.2f}-{span['min_relevance'][1]:.2f}, "
        f"min_confidence {span['min_confidence'][0]:.2f}-{span['min_confidence'][1]:.2f})"
    )
    lines += [
        "",
        f"{ties} grid point(s) reach the best grounded accuracy{spans}; ties go to the lower hallucination "
        f"rate, then to the lower thresholds. The grid is in sweep-{slug(set_name)}.json.",
        "",
        f"![trade-off](sweep-{slug(set_name)}.png)",
        "",
    ]
    return lines


# -------------------------------------------------------------------------------------------- figures


def plot_metrics(set_name: str, metrics_by_pipeline: dict[str, dict[str, Any]], path: Path) -> Path:
    """Grouped bars: one group per rate metric, one bar per pipeline."""
    plt = _pyplot()
    import numpy as np

    names = list(metrics_by_pipeline)
    metrics = [m for m in RATE_METRICS if any(m in d for d in metrics_by_pipeline.values())]
    x = np.arange(len(metrics))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(metrics)), 4.5))
    for i, name in enumerate(names):
        values = [float(metrics_by_pipeline[name].get(m, 0.0)) for m in metrics]
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, metrics, rotation=30, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("rate")
    n = next((d.get("n") for d in metrics_by_pipeline.values() if d.get("n") is not None), "?")
    ax.set_title(f"{set_name}: metrics per pipeline (n = {n})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sweep(set_name: str, sweep: dict[str, Any], path: Path) -> Path:
    """Grounded accuracy and hallucination rate against each threshold, the other at its configured value."""
    plt = _pyplot()

    configured = sweep["configured"]
    points = sweep["points"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, vary, fixed in ((axes[0], "min_relevance", "min_confidence"), (axes[1], "min_confidence", "min_relevance")):
        curve = sorted(
            (p for p in points if math.isclose(p[fixed], configured[fixed], abs_tol=1e-9)), key=lambda p: p[vary]
        )
        xs = [p[vary] for p in curve]
        ax.plot(xs, [p["metrics"][PRIMARY_METRIC] for p in curve], marker="o", ms=3, label="grounded accuracy")
        ax.plot(xs, [p["metrics"]["hallucination_rate"] for p in curve], marker="s", ms=3, label="hallucination rate")
        ax.axvline(configured[vary], color="grey", ls="--", lw=1, label=f"configured {vary}")
        ax.set_xlabel(f"{vary} ({fixed} = {configured[fixed]:.2f})")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("rate")
    axes[0].legend(fontsize=8)
    best = sweep["best"]
    fig.suptitle(
        f"{set_name}: abstention trade-off; best grounded accuracy {best['metrics'][PRIMARY_METRIC]:.3f} at "
        f"min_relevance {best['min_relevance']:.2f}, min_confidence {best['min_confidence']:.2f}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _sweep_without_records(sweep: dict[str, Any]) -> dict[str, Any]:
    data = {key: value for key, value in sweep.items() if key != "open_run"}
    if "open_run" in sweep:
        data["open_run"] = {k: v for k, v in sweep["open_run"].items() if k != "records"}
    return data
