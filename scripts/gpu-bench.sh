#!/usr/bin/env bash
# The GPU section of docs/BENCHMARKS.md, in under 5 minutes on one GPU (issue 29 item 4):
#   scripts/gpu-bench.sh [more selmem bench flags]
# selmem bench on CUDA in bf16 with torch.compile: the cpu preset's training step and inference per
# model, batch-1 streaming, and decoding against GPT-2 (selmem/analysis/bench_gpu.py). Models not
# reached within --bench.budget-s are listed as not timed, so the record ends on time. Without a
# CUDA device it stops at once with one line saying so. PYTHON picks the interpreter (default:
# .venv/bin/python, else python3); it needs torch with CUDA and transformers (selmem[hf]).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
exec "$py" -m selmem bench --config configs/cpu.yaml --bench.gpu \
  --bench.models selmem local full txl --bench.repeats 3 --bench.budget-s 150 \
  --bench.page docs/BENCHMARKS.md "$@"
