#!/usr/bin/env bash
# Create .venv and install the project with its test tools. torch comes first, as the CPU wheel: a plain
# `torch` requirement would pull a multi-GB CUDA build. Safe to rerun (pip skips what is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
# Best effort: Debian's Tesseract for OCR of scanned pages (ingest.ocr "auto" uses it when present; without it,
# such PDFs are reported and skipped, and the OCR tests skip). Needs root or password-less sudo; never fails.
if ! command -v tesseract >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    if command -v apt-get >/dev/null \
        && $SUDO apt-get update -qq >/dev/null 2>&1 \
        && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr tesseract-ocr-eng >/dev/null 2>&1; then
        echo "setup: installed $(tesseract --version 2>/dev/null | head -1)"
    else
        echo "setup: tesseract-ocr not installed (no apt-get or no root): scanned PDFs will be skipped"
    fi
fi
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "setup: ok ($(.venv/bin/python -c 'import torch, transformers, faiss; print("torch", torch.__version__, "transformers", transformers.__version__, "faiss", faiss.__version__)'))"
