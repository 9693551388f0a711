#!/usr/bin/env bash
# Issue 16's measurements at CPU scale: the llama arch against the gpt2 arch, Muon against AdamW
# (each at its own learning rate from a short sweep) and each speedrun trick on the llama arch;
# equal tokens (STEPS × 8 × 128, 1.02M at the default), 3 seeds, one `lmhost compare` per question.
# Usage: docs/studies/modern_baseline.sh [OUT_DIR]; LMHOST and SPEEDRUN name the binary and plugin.
set -euo pipefail
out=${1:-modern-baseline}
steps=${STEPS:-1000}
seeds=${SEEDS:-3}
lmhost=${LMHOST:-lmhost}
speedrun=${SPEEDRUN:-plugins/speedrun}
mkdir -p "$out"
cd "$out"
run() { "$lmhost" run "$@" --skip-finished --no-report eval_every=100 log_every=100; }

# Short learning-rate sweeps (seed 1, a fifth of the tokens, fully decayed schedules).
run baseline --preset llama-tiny --runs-dir sweep-adamw lr=5e-4,1e-3,2e-3,4e-3 steps=$((steps / 5))
run baseline --preset llama-tiny --runs-dir sweep-muon optimizer=muon muon_lr_scale=10,20,40,80 steps=$((steps / 5))
"$lmhost" compare sweep-adamw/*/*/ --out sweep-adamw/report --overwrite | tail -n +1
"$lmhost" compare sweep-muon/*/*/ --out sweep-muon/report --overwrite | tail -n +1

# The architectures, at the defaults (lr 1e-3).
run baseline --preset tiny --runs-dir arch seeds=$seeds steps=$steps
run baseline --preset llama-tiny --runs-dir arch seeds=$seeds steps=$steps
# Muon on the llama arch, at the sweep's best scale (MUON_SCALE, 20 unless told).
run baseline --preset llama-tiny --runs-dir arch optimizer=muon muon_lr_scale=${MUON_SCALE:-20} seeds=$seeds steps=$steps
# The speedrun tricks on the llama arch, against its baseline.
run "$speedrun" --preset llama-tiny --runs-dir tricks variant=qk_norm,relu2,softcap,zero_init seeds=$seeds steps=$steps
