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
# Environment: LMHOST, PLUGINS, RUNS (default studies), STEPS, SEEDS (default 3), as claim.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
lmhost=${LMHOST:-$root/target/release/lmhost}
plugin=${PLUGINS:-$root/plugins}/simplified_blocks.so
runs=${RUNS:-studies}
reports=$(dirname "$runs")/reports
common=(test_fraction=0.1 eval_every=100)
final=(steps="${STEPS:-1953}" seeds="${SEEDS:-3}" "${common[@]}" --no-baseline --skip-finished --runs-dir "$runs/final")
pre_ln=(variant=pre-ln)
sas_p=(variant=skipless-parallel norm=none)

folder_of() { sed -n "s/^$1//p" | tail -n1; }
# The lr a tune's report picked for the plugin's arm.
pick() { python3 -c 'import json, sys; print(next(a["picked"] for a in json.load(open(sys.argv[1]))["arms"] if not a["is_baseline"]))' "$(dirname "$1")/report.json"; }

# 1. The tunes.
pre_ln_tune=$("$lmhost" tune "$plugin" "${pre_ln[@]}" seeds=1 steps=489 "${common[@]}" --runs-dir "$runs" | tee >(cat >&2) | folder_of 'report: ')
sas_p_tune=$("$lmhost" tune "$plugin" "${sas_p[@]}" seeds=1 steps=489 "${common[@]}" --runs-dir "$runs" | tee >(cat >&2) | folder_of 'report: ')
pre_ln_lr=$(pick "$pre_ln_tune")
sas_p_lr=$(pick "$sas_p_tune")
echo "claim: pre-ln lr=$pre_ln_lr, sas-p lr=$sas_p_lr" >&2

# 2. The final.
pre_ln_runs=$("$lmhost" run "$plugin" "${pre_ln[@]}" lr="$pre_ln_lr" "${final[@]}" | tee >(cat >&2) | folder_of 'sweep:.* folder:')
sas_p_runs=$("$lmhost" run "$plugin" "${sas_p[@]}" lr="$sas_p_lr" "${final[@]}" | tee >(cat >&2) | folder_of 'sweep:.* folder:')

# 3. Against Pre-LN, per token and per second.
pre_ln_finished=$(grep -l '"status": *"finished"' "$pre_ln_runs"/*/run.json | xargs -n1 dirname)
sas_p_finished=$(grep -l '"status": *"finished"' "$sas_p_runs"/*/run.json | xargs -n1 dirname)
against=$(echo "$pre_ln_finished" | head -n1)
for x in tokens time; do
  # shellcheck disable=SC2086 # one run folder per word
  "$lmhost" compare $pre_ln_finished $sas_p_finished --baseline "$against" --split test --x "$x" --out "$reports/sas_p-final-$x" --overwrite
done
