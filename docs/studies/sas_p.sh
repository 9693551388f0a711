#!/usr/bin/env bash
# docs/studies/sas_p.md: SAS-P without block norms against Pre-LN (He & Hofmann 2024), both the
# simplified_blocks plugin (their baseline: RMSNorm, ReLU MLP, biases only on Q and K), tiny
# preset, a 10 % test split.
#   1. a tune of lr for each form (1e-3 × ¼ … 4, 489 steps = 0.5M tokens, seed 1; each tune also
#      trains lmhost's GPT-2 baseline at the same points, shared with the other studies);
#   2. both forms at their picks, STEPS steps (default 1953: 2M tokens), seeds 1-3;
#   3. compared on the test split, per token and per second of training (--x time).
# Run again, it trains only what is missing (same binary and plugin library).
#
#   bash docs/studies/sas_p.sh        # after cargo build --release --workspace
# Environment: lib.sh's (LMHOST, PLUGINS, RUNS), STEPS, SEEDS (default 3).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
plugin=$plugins/simplified_blocks.so
final=(steps="${STEPS:-1953}" seeds="${SEEDS:-3}" "${common[@]}" --no-baseline --skip-finished --runs-dir "$runs/final")
pre_ln=(variant=pre-ln)
sas_p=(variant=skipless-parallel norm=none)

# 1. The tunes; the plugin's arm's pick is the second.
read -r _ pre_ln_lr <<<"$(picks "$("$lmhost" tune "$plugin" "${pre_ln[@]}" "${tune_budget[@]}" | printed 'report: ')")"
read -r _ sas_p_lr <<<"$(picks "$("$lmhost" tune "$plugin" "${sas_p[@]}" "${tune_budget[@]}" | printed 'report: ')")"
echo "claim: pre-ln lr=$pre_ln_lr, sas-p lr=$sas_p_lr" >&2

# 2. The final.
pre_ln_runs=$("$lmhost" run "$plugin" "${pre_ln[@]}" lr="$pre_ln_lr" "${final[@]}" | run_folders)
sas_p_runs=$("$lmhost" run "$plugin" "${sas_p[@]}" lr="$sas_p_lr" "${final[@]}" | run_folders)

# 3. Against Pre-LN, per token and per second.
for x in tokens time; do compare_on_test "sas_p-final-$x" "$pre_ln_runs" "$sas_p_runs" --x "$x"; done
