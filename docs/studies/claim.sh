#!/usr/bin/env bash
# The studies' protocol for a claim "experiment X beats the baseline" (docs/studies/README.md):
#   1. a tune of lr for both arms: the preset's 1e-3 × ¼, ½, 1, 2, 4, 489 steps (0.5M tokens),
#      seed 1, a 10 % test split held out beside validation;
#   2. each arm at the lr its tune picked (on validation loss), 4,883 steps (5M tokens), seeds 1-3;
#   3. the six runs compared on the test split (`report.md` in RUNS/../reports/NAME-final).
# The baseline's final runs are shared: every claim whose baseline picks the same lr reuses them.
# Run again, it trains only what is missing (finished twins are reused, a killed run resumes) —
# with the same lmhost binary and plugin library (their sha256 are in every run's fingerprint).
#
#   bash docs/studies/claim.sh NAME [KEY=VALUE…]    # after cargo build --release --workspace
#   e.g. bash docs/studies/claim.sh unified_embeddings variant=ue8x
# Environment: lib.sh's (LMHOST, PLUGINS, RUNS), STEPS (the final's, default 4883), SEEDS (3).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
name=$1
shift
plugin=$plugins/$name.so
final=(steps="${STEPS:-4883}" seeds="${SEEDS:-3}" "${common[@]}" --skip-finished --runs-dir "$runs/final")

# 1. The tune; its report names each arm's pick.
tune_report=$("$lmhost" tune "$plugin" "$@" "${tune_budget[@]}" | printed 'report: ')
read -r baseline_lr experiment_lr <<<"$(picks "$tune_report")"
echo "claim: baseline lr=$baseline_lr, $name lr=$experiment_lr" >&2

# 2. The final: each arm at its own pick.
baseline_runs=$("$lmhost" run baseline lr="$baseline_lr" "${final[@]}" | run_folders)
experiment_runs=$("$lmhost" run "$plugin" "$@" lr="$experiment_lr" --no-baseline "${final[@]}" | run_folders)

# 3. The comparison on the test split.
compare_on_test "$name-final" "$baseline_runs" "$experiment_runs"
