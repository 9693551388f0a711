#!/usr/bin/env bash
# docs/studies/muon.md: Muon against AdamW on the Transformer++ (llama-tiny), each tuned.
#   1. AdamW's lr: the tune transformer_pp.sh runs (1e-3 × ¼ … 4, 489 steps = 0.5M tokens,
#      seed 1; reused when it ran);
#   2. Muon's muon_lr_scale (the matrices' lr as a multiple of the scheduled lr, which the
#      embedding, head and gains keep on AdamW at AdamW's pick): 2.5 … 40 (×2 apart, --extend
#      past an edge), the same budget;
#   3. each at its pick, 489 steps, seeds 1-3 (seed 1 is the tune's run, reused);
#   4. compared on the test split per token and per second (RUNS/../reports/muon-final-{tokens,time}).
# 0.5M tokens, not 5M: Muon's Newton–Schulz products make its step ≈ 3× AdamW's on this CPU.
# Run again, it trains only what is missing (same binary).
#
#   bash docs/studies/muon.sh        # after cargo build --release --workspace
# Environment: lib.sh's (LMHOST, PLUGINS, RUNS), SEEDS (default 3).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
llama=(--preset llama-tiny)
final=(steps=489 seeds="${SEEDS:-3}" "${common[@]}" --skip-finished --runs-dir "$runs")

# 1-2. The tunes (one arm each).
adamw_lr=$(picks "$("$lmhost" tune baseline "${llama[@]}" "${tune_budget[@]}" | printed 'report: ')")
muon=(optimizer=muon lr="$adamw_lr")
muon_scale=$(picks "$("$lmhost" tune baseline "${llama[@]}" "${muon[@]}" muon_lr_scale=2.5,5,10,20,40 --extend "${tune_budget[@]}" | printed 'report: ')")
echo "muon: adamw lr=$adamw_lr, muon_lr_scale=$muon_scale" >&2

# 3. The final.
adamw_runs=$("$lmhost" run baseline "${llama[@]}" lr="$adamw_lr" "${final[@]}" | run_folders)
muon_runs=$("$lmhost" run baseline "${llama[@]}" "${muon[@]}" muon_lr_scale="$muon_scale" "${final[@]}" | run_folders)

# 4. Against AdamW, per token and per second.
for x in tokens time; do compare_on_test "muon-final-$x" "$adamw_runs" "$muon_runs" --x "$x"; done
