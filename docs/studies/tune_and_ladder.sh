#!/usr/bin/env bash
# The two studies of docs/studies/tune_and_ladder.md, as run for it (tiny preset, the embedded
# Shakespeare corpus, CPU): a tune of value_norm against the baseline over the default lr grid
# (the preset's lr × ¼ … 4) with three seeds, and a ladder of unified_embeddings against the
# baseline at depths 1–4 (width 64 per layer) with two seeds, at a tenth of a token per parameter.
#
#   bash docs/studies/tune_and_ladder.sh     # from the checkout, after cargo build --release --workspace
set -euo pipefail
cd "$(dirname "$0")/../.."
time target/release/lmhost tune plugins/value_norm.so seeds=3
time target/release/lmhost ladder plugins/unified_embeddings.so sizes=1,2,3,4 tokens_per_param=0.1 seeds=2
