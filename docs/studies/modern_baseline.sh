#!/usr/bin/env bash
# Issue 16's measurements at CPU scale: the llama arch against the gpt2 arch, Muon against AdamW
# (each at its own learning rate from a short sweep) and each speedrun trick on the llama arch;
# equal tokens (STEPS × 8 × 128: 1.02M at the default), SEEDS seeds, one `lmhost compare` each.
# Usage: docs/studies/modern_baseline.sh [OUT_DIR]; LMHOST and SPEEDRUN name the binary and the
# speedrun plugin (a .so or plugins/speedrun).
set -euo pipefail
out=${1:-modern-baseline}
steps=${STEPS:-1000}
seeds=${SEEDS:-3}
lmhost=${LMHOST:-lmhost}
speedrun=${SPEEDRUN:-plugins/speedrun}
mkdir -p "$out"
cd "$out"
run() { "$lmhost" run "$@" --skip-finished --no-report eval_every=100 log_every=100 | grep -E "^(sweep:|arm:.*step:$steps/)" || true; }
# The value of KEY of the finished run with the lowest final validation loss under DIR.
best() {
  python3 - "$1" "$2" <<'PY'
import glob, json, sys
key, root = sys.argv[1], sys.argv[2]
runs = [json.load(open(p)) for p in glob.glob(f"{root}/**/run.json", recursive=True)]
runs = [r for r in runs if r["status"] == "finished"]
best = min(runs, key=lambda r: r["result"]["val_loss"])
print({**best["config"]["run"], **best["config"]["model"]}[key])
PY
}
first_run() { dirname "$(ls "$1"/*/*/run.json "$1"/*/run.json 2>/dev/null | head -1)"; }

# Short learning-rate sweeps on the llama arch (seed 1, a fifth of the tokens, fully decayed).
run baseline --preset llama-tiny --runs-dir sweep-adamw lr=5e-4,1e-3,2e-3,4e-3 steps=$((steps / 5))
run baseline --preset llama-tiny --runs-dir sweep-muon optimizer=muon muon_lr_scale=5,10,20,40 steps=$((steps / 5))
adamw_lr=$(best lr sweep-adamw)
muon_scale=$(best muon_lr_scale sweep-muon)
echo "sweeps: AdamW's best lr $adamw_lr; Muon's best muon_lr_scale $muon_scale (lr 1e-3)"
"$lmhost" compare sweep-adamw/*/*/ sweep-muon/*/*/ --out sweep-report --overwrite >/dev/null

# The architectures at AdamW's lr 1e-3 (the default both were tuned at before).
run baseline --preset tiny --runs-dir gpt2 seeds=$seeds steps=$steps
run baseline --preset llama-tiny --runs-dir llama seeds=$seeds steps=$steps
"$lmhost" compare gpt2/*/*/ llama/*/*/ --baseline "$(first_run gpt2)" --out arch-report --overwrite
# Muon against AdamW on the llama arch, each at its sweep's best (AdamW's runs above when 1e-3).
adamw=llama
if [ "$adamw_lr" != "0.001" ]; then
  adamw=llama-adamw
  run baseline --preset llama-tiny --runs-dir llama-adamw lr="$adamw_lr" seeds=$seeds steps=$steps
fi
run baseline --preset llama-tiny --runs-dir llama-muon optimizer=muon muon_lr_scale="$muon_scale" seeds=$seeds steps=$steps
"$lmhost" compare "$adamw"/*/*/ llama-muon/*/*/ --baseline "$(first_run "$adamw")" --out muon-report --overwrite
# The speedrun tricks on the llama arch, against its baseline (the runs above stand in for it).
run "$speedrun" --preset llama-tiny --runs-dir llama variant=qk_norm,relu2,softcap,zero_init seeds=$seeds steps=$steps
"$lmhost" compare llama/*/*/ --out tricks-report --overwrite
