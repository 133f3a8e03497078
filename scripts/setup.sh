#!/usr/bin/env bash
# Create .venv and install the project with its test tools. torch comes first, as the CPU wheel: a plain
# `torch` requirement would pull a multi-GB CUDA build. Safe to rerun (pip skips what is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "setup: ok ($(.venv/bin/python -c 'import torch, transformers, faiss; print("torch", torch.__version__, "transformers", transformers.__version__, "faiss", faiss.__version__)'))"
