#!/usr/bin/env bash
# The lmc-transformers study at CPU scale: one parent run, pairs of children branched from it at
# several steps (differing only in data order), each pair interpolated, and one report with the
# barrier of every pair. Usage: docs/lmc-study.sh [OUT_DIR] [STEPS] [BRANCH_STEPS...]
# Host keys for the parent (and so its children) in LMC_KEYS, e.g. LMC_KEYS="lr=3e-3 seed=7";
# POINTS α per path (default 30, lmc-transformers' count).
set -euo pipefail
out=${1:-lmc-study}
steps=${2:-300}
shift 2 2>/dev/null || shift $#
at=("${@:-0 15 30 60 120}")
at=(${at[@]})
lmhost=${LMHOST:-lmhost}
mkdir -p "$out"
cd "$out"
every=$(printf '%s\n' "${at[@]}" | awk 'function gcd(a,b){return b?gcd(b,a%b):a} {g=gcd(g,$1)} END{print (g?g:1)}')
"$lmhost" run baseline --runs-dir runs steps="$steps" checkpoint_every="$every" eval_every=50 ${LMC_KEYS:-}
parent=$(ls -d runs/*/ | head -1)
parent=${parent%/}
tables=()
for k in "${at[@]}"; do
  before=$(ls -d runs/*/ | sort)
  # Children keep only their final checkpoint (one every 25 steps in all 11 runs of 489 is 12 GB).
  "$lmhost" branch "$parent" --at "$k" --children 2 checkpoint_every=0
  children=($(comm -13 <(echo "$before") <(ls -d runs/*/ | sort)))
  "$lmhost" interpolate "${children[0]%/}" "${children[1]%/}" --points "${POINTS:-30}" --out "lmc-at-$k" | grep barrier
  tables+=("lmc-at-$k")
done
"$lmhost" compare "$parent" runs/*/ "${tables[@]}" --out report --overwrite
grep -A20 "## Linear mode connectivity" report/report.md
