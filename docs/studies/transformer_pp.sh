#!/usr/bin/env bash
# docs/studies/transformer_pp.md: the Transformer++ (lmhost's llama arch: RoPE, RMSNorm, SwiGLU,
# no biases) against lmhost's GPT-2 baseline, both AdamW, each at its own tuned lr, tiny shape.
#   1. a tune of lr for each (1e-3 × ¼ … 4, 489 steps = 0.5M tokens, seed 1; the GPT-2 one is the
#      baseline arm of the other studies' tunes, reused);
#   2. each at its pick, STEPS steps (default 4883: 5M tokens), seeds 1-3 (the GPT-2 runs are the
#      other studies' baseline final, reused);
#   3. compared on the test split (RUNS/../reports/transformer_pp-final).
# Run again, it trains only what is missing (same binary).
#
#   bash docs/studies/transformer_pp.sh        # after cargo build --release --workspace
# Environment: lib.sh's (LMHOST, PLUGINS, RUNS), STEPS, SEEDS (default 3).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
final=(steps="${STEPS:-4883}" seeds="${SEEDS:-3}" "${common[@]}" --skip-finished --runs-dir "$runs/final")

# 1. The tunes (one arm each).
gpt2_lr=$(picks "$("$lmhost" tune baseline "${tune_budget[@]}" | printed 'report: ')")
llama_lr=$(picks "$("$lmhost" tune baseline --preset llama-tiny "${tune_budget[@]}" | printed 'report: ')")
echo "transformer_pp: gpt2 lr=$gpt2_lr, llama lr=$llama_lr" >&2

# 2. The final.
gpt2_runs=$("$lmhost" run baseline lr="$gpt2_lr" "${final[@]}" | run_folders)
llama_runs=$("$lmhost" run baseline --preset llama-tiny lr="$llama_lr" "${final[@]}" | run_folders)

# 3. Against GPT-2, on the test split.
compare_on_test transformer_pp-final "$gpt2_runs" "$llama_runs"
