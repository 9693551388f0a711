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
# Environment: LMHOST (the binary), PLUGINS (the folder of NAME.so), RUNS (default: studies),
# STEPS (the final's steps, default 4883), SEEDS (default 3).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
lmhost=${LMHOST:-$root/target/release/lmhost}
name=$1
shift
plugin=${PLUGINS:-$root/plugins}/$name.so
runs=${RUNS:-studies}
common=(test_fraction=0.1 eval_every=100)
final=(steps="${STEPS:-4883}" seeds="${SEEDS:-3}" "${common[@]}" --skip-finished --runs-dir "$runs/final")

# The folder a sweep (or tune) prints as `sweep:NAME runs:N folder:PATH`, or its report's.
folder_of() { sed -n "s/^$1//p" | tail -n1; }

# 1. The tune; its report names each arm's pick.
tune_report=$("$lmhost" tune "$plugin" "$@" seeds=1 steps=489 "${common[@]}" --runs-dir "$runs" | tee >(cat >&2) | folder_of 'report: ')
picks=$(python3 -c 'import json, sys; print(" ".join(str(a["picked"]) for a in sorted(json.load(open(sys.argv[1]))["arms"], key=lambda a: not a["is_baseline"])))' "$(dirname "$tune_report")/report.json")
read -r baseline_lr experiment_lr <<<"$picks"
echo "claim: baseline lr=$baseline_lr, $name lr=$experiment_lr" >&2

# 2. The final: each arm at its own pick.
baseline_runs=$("$lmhost" run baseline lr="$baseline_lr" "${final[@]}" | tee >(cat >&2) | folder_of 'sweep:.* folder:')
experiment_runs=$("$lmhost" run "$plugin" "$@" lr="$experiment_lr" --no-baseline "${final[@]}" | tee >(cat >&2) | folder_of 'sweep:.* folder:')

# 3. The comparison on the test split, of the finished runs (a run still interrupted is left out).
finished=$(grep -l '"status": *"finished"' "$baseline_runs"/*/run.json "$experiment_runs"/*/run.json | xargs -n1 dirname)
# shellcheck disable=SC2086 # one run folder per word
"$lmhost" compare $finished --split test --out "$(dirname "$runs")/reports/$name-final" --overwrite
