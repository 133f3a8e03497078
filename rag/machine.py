"""What a measurement ran on: one description of the machine for the eval reports and the benchmarks."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from rag.errors import ModelUnavailable
from rag.settings import ModelSettings


def machine_info(models: ModelSettings | None = None) -> dict[str, Any]:
    """CPU, cores, RAM, load, library versions, the GPU (None without one) and, given ``models``, the device
    the models run on. Imports torch and faiss."""
    import faiss
    import torch

    from rag.indexing.vector_index import gpu_count
    from rag.models import select_device

    device = None
    if models is not None:
        try:
            device = select_device(models)
        except ModelUnavailable as exc:
            device = f"unavailable ({exc})"
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": _ram_gib(),
        # A busy machine shows here: figures taken with a load average near the core count are not results.
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "faiss": faiss.__version__,
        "faiss_gpus": gpu_count(),
    }


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
