"""What every benchmark script shares: the machine description, the header, percentiles and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, load, library versions and the GPU (or "no GPU"), with the date and command."""
    import faiss
    import torch

    from rag.indexing.vector_index import gpu_count

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return {
        "date": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": _ram_gib(),
        # A busy machine shows here: figures taken with a load average near the core count are not results.
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_device": cuda,
        "faiss": faiss.__version__,
        "faiss_gpus": gpu_count(),
    }


def print_header(title: str, info: dict[str, Any]) -> None:
    """The machine block every script prints first."""
    print(f"== {title} ==")
    print(f"date:     {info['date']}")
    print(f"command:  {info['command']}")
    print(f"cpu:      {info['cpu']} ({info['cores']} cores, {info['cores_usable']} usable), "
          f"RAM {info['ram_gib']} GiB, load average {' '.join(map(str, info['load_average']))}")
    print(f"software: python {info['python']}, torch {info['torch']} ({info['torch_threads']} threads), "
          f"faiss {info['faiss']}")
    print(f"gpu:      {info['cuda_device']} (faiss sees {info['faiss_gpus']})")
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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
