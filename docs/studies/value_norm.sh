#!/usr/bin/env bash
# docs/studies/value_norm.md: value norm (lmplay normv1_0) against the baseline, tiny preset, the
# embedded Shakespeare corpus, a 10 % test split. Each arm's lr from a five-point tune at 0.5M
# tokens (one seed), then both at their best lr (the tune picked 1e-3 for both) for 5M tokens
# (4,883 steps of 1,024 tokens), seeds 1-3, compared on the test split.
# Run again, it trains only what is missing (finished twins are reused, a killed run resumes) —
# with the same lmhost binary (its sha256 is part of every run's fingerprint).
#
#   bash docs/studies/value_norm.sh [RUNS_DIR]     # after cargo build --release --workspace
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
lmhost=${LMHOST:-$root/target/release/lmhost}
plugin=$root/plugins/value_norm.so
runs=${1:-studies}
common=(test_fraction=0.1 eval_every=100)

# 1. The tune: lr = 1e-3 × ¼, ½, 1, 2, 4 for both arms, 489 steps (0.5M tokens), seed 1.
"$lmhost" tune "$plugin" seeds=1 steps=489 "${common[@]}" --runs-dir "$runs"

# 2. Both arms at the picked lr, 5M tokens, three seeds (a different pick per arm would be two
#    runs: `lmhost run baseline lr=A …` and `lmhost run "$plugin" --no-baseline lr=B …`).
"$lmhost" run "$plugin" lr=1e-3 steps=4883 seeds=3 "${common[@]}" --skip-finished --runs-dir "$runs/final"

# 3. The comparison on the test split (the six runs of the final; an interrupted attempt's
#    folders, if any, left out).
"$lmhost" compare $(grep -l '"status": *"finished"' "$runs"/final/sweep-value_norm-*/*/run.json | xargs -n1 dirname) --split test --out "$runs/value_norm-report" --overwrite
