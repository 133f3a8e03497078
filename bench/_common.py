"""What every benchmark script shares: the machine description, the header, percentiles and the JSON file."""

from __future__ import annotations

import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np


def machine_info() -> dict[str, Any]:
    """``rag.machine.machine_info`` (CPU, cores, RAM, load, versions, GPU) with the date and the command."""
    from rag.machine import machine_info as describe

    return {
        "date": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
        **describe(),
    }


def print_header(title: str, info: dict[str, Any]) -> None:
    """The machine block every script prints first."""
    print(f"== {title} ==")
    print(f"date:     {info['date']}")
    print(f"command:  {info['command']}")
    print(f"cpu:      {info['cpu']} ({info['cpu_count']} cores, {info['cores_usable']} usable), "
          f"RAM {info['ram_gib']} GiB, load average {' '.join(map(str, info['load_average']))}")
    print(f"software: python {info['python']}, torch {info['torch']} ({info['torch_threads']} threads), "
          f"faiss {info['faiss']}")
    print(f"gpu:      {info['gpu'] or 'no GPU'} (faiss sees {info['faiss_gpus']})")
    print(flush=True)


def percentiles(values: list[float], qs: tuple[float, ...] = (50, 95, 99)) -> dict[str, float | None]:
    """{"p50": ..., "p95": ..., "p99": ...} of ``values`` (None when there are none)."""
    if not values:
        return {f"p{q:g}": None for q in qs}
    found = np.percentile(np.asarray(values, dtype=np.float64), qs)
    return {f"p{q:g}": float(v) for q, v in zip(qs, found)}


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    """Write the figures to ``path`` (parents created); nothing when ``path`` is None."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    print(f"figures written to {path}")


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a table cell; "-" when missing."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def parse_int_list(text: str) -> list[int]:
    """ "1,8,32" -> [1, 8, 32]; argparse ``type=`` for comma-separated positive integers."""
    import argparse

    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
