#!/usr/bin/env bash
# The prepared GPU run of issue 21 (docs/benchmarks.md, "The GPU run"): the versions and nvidia-smi, then
# `python -m bench.gpu_run`: the -m gpu tests and every GPU benchmark in priority order within a time budget,
# writing $OUT/gpu-figures.json (and this output to $OUT/gpu-run.log).
#
# On the GPU machine, after the staging calls that `python -m bench.gpu_stage` wrote to .stage/COMMANDS.md:
#     source /tmp/stage/env.sh && bash bench/gpu_run.sh                  the whole run (about 6 minutes)
#     source /tmp/stage/env.sh && bash bench/gpu_run.sh --only search    a rerun of some steps
# Dry run on a CPU machine (the GPU steps are skipped with the reason; their commands run at smoke sizes):
#     flock /work/cpu.lock bash bench/gpu_run.sh --dry-run
#
# Environment: OUT (default bench-out/gpu-run), PYTHON (default python3), GPU_RUN_BUDGET_S (default 330: the
# steps stop being started past it), STAGED_FILES (set by /tmp/stage/env.sh: the staged models and data; unset,
# the models and data of this checkout are used), RAG_MODELS__CACHE_DIR (default /tmp/rag-cache where staged).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
OUT="${OUT:-bench-out/gpu-run}"
BUDGET="${GPU_RUN_BUDGET_S:-330}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${STAGED_FILES:-}" ]; then
    # CTranslate2 conversions go here; unstaged (a dry run) the checkout's own model cache is used as it is.
    export RAG_MODELS__CACHE_DIR="${RAG_MODELS__CACHE_DIR:-/tmp/rag-cache}"
fi

args=()
for arg in "$@"; do
    case "$arg" in
        --dry-run) args+=(--smoke) ;;
        *) args+=("$arg") ;;
    esac
done

{
    echo "== gpu_run.sh $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, budget ${BUDGET} s, out $OUT"
    "$PYTHON" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, "CUDA", torch.version.cuda, "available:", torch.cuda.is_available())'
    nvidia-smi || echo "nvidia-smi: not available on this machine"
    # The driver stops starting steps at the budget; this outer limit only guards against a hang in between.
    timeout -k 10 $((BUDGET + 180)) "$PYTHON" -m bench.gpu_run --out "$OUT" --budget-s "$BUDGET" "${args[@]}"
} 2>&1 | tee "$OUT/gpu-run.log"
exit "${PIPESTATUS[0]}"
