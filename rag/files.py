"""Small file-system helpers: durable writes and safe file-name pieces."""

from __future__ import annotations

import os
import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries after a rename) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def slug(name: str) -> str:
    """``name`` as a piece of a file name: every run of other characters than letters, digits, '.', '_' and
    '-' becomes one '_' (an empty name gives '_')."""
    return _UNSAFE.sub("_", name) or "_"
