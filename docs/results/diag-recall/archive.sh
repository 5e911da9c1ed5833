#!/usr/bin/env bash
# Copy the single-run folders of FINDINGS section 12 from runs/ without checkpoints: command,
# config, environment, results, and evals.jsonl (the test-split lines of metrics.jsonl, which
# hold every evaluation's accuracy and memory diagnostics).
#   docs/results/diag-recall/archive.sh u-selmem-apr u-full ...
set -euo pipefail
cd "$(dirname "$0")"
for name in "$@"; do
  src=../../../runs/$name
  mkdir -p "$name"
  cp "$src"/{command.txt,config.yaml,env.json,results.json} "$name"/
  grep '"split": "test"' "$src/metrics.jsonl" > "$name/evals.jsonl"
done
