#!/usr/bin/env bash
# The README's first command: from a fresh machine to an AutoScale mixture, on CPU, with no
# download beyond the Python packages. It
#   1. creates the project's virtualenv and installs autoscale-ds (CPU torch pinned),
#   2. builds the built-in corpus (5 domains cut from this Python's standard library) and
#      trains a SentencePiece tokenizer on it,
#   3. runs `autoscale pipeline` with examples/demo_pipeline.yaml: DDO at 150K and 300K
#      tokens (2 x 11 GPT-2 proxy runs with DeepSpeed), the prediction at 3M tokens,
#      exports for Megatron-LM / Megatron-DeepSpeed / GPT-NeoX / HF, and a report with plots.
# Usage: bash scripts/demo.sh [OUTPUT_DIR]   (default: demo_out; a rerun reuses finished work)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-demo_out}"
started=$(date +%s)

source scripts/_venv.sh
install_project data,train

echo "==> building the built-in corpus and its tokenizer in $OUT/prepared"
"$VENV/bin/autoscale" prepare --builtin-corpus --builtin-chars 1e6 --train-tokenizer 2000 \
    --out-dir "$OUT/prepared"

echo "==> running the AutoScale pipeline (about 8 minutes on 2 cores; one line per proxy run)"
"$VENV/bin/autoscale" pipeline --config examples/demo_pipeline.yaml \
    --set manifest="$OUT/prepared/manifest.yaml" --set output_dir="$OUT/autoscale"

echo "==> done in $(( $(date +%s) - started )) s"
echo "mixture: $OUT/autoscale/mixture_3M.json"
echo "report:  $OUT/autoscale/report.md  (plots next to it)"
