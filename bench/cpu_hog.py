"""A CPU hog: one process per usable core, each spinning in a loop, what another job on a shared machine (an
evaluation beside the server) does to it. ``python -m bench.burst --busy`` and tests/test_hardening_slow.py run
the server beside it.

On the team's shared machine the hog is part of a CPU-heavy job: run whatever starts it under
``flock /work/cpu.lock``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

SPIN = "while True: pass"


def usable_cores() -> int:
    """Cores this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class CpuHog:
    """``processes`` spinning Python processes (default: one per usable core) while the context is open.

    They are this process's children, stopped by their own ids on exit (terminate, then kill after 5 s)."""

    def __init__(self, processes: int | None = None):
        self.processes = processes or usable_cores()
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")
        self._children: list[subprocess.Popen] = []

    def __enter__(self) -> "CpuHog":
        for _ in range(self.processes):
            self._children.append(subprocess.Popen(
                [sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ))
        time.sleep(0.2)  # let them start spinning before the caller measures anything
        dead = [child.pid for child in self._children if child.poll() is not None]
        if dead:
            self.__exit__(None, None, None)
            raise RuntimeError(f"the CPU hog's processes {dead} exited at once")
        return self

    def __exit__(self, *exc: object) -> None:
        for child in self._children:
            if child.poll() is None:
                child.terminate()
        for child in self._children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=5)
        self._children.clear()

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self._children]
