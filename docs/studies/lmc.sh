#!/usr/bin/env bash
# docs/studies/lmc.md: linear mode connectivity (lmc-transformers; Frankle et al. 2020's
# "stability to SGD noise"). Three parents (seeds 1-3) of lmhost's baseline at its tuned lr
# (1e-3), tiny preset, 489 steps (0.5M tokens); from each, two children branched at steps
# 0, 25, 50, 100 and 200 that differ only in data order, trained to step 489; each pair
# interpolated at 30 α on the validation windows (docs/lmc-study.sh, once per parent, in
# RUNS/lmc-seed-N, its report in RUNS/lmc-seed-N/report). Then one table: the barrier at each
# branch step, per parent and mean ± std.
#
#   bash docs/studies/lmc.sh        # after cargo build --release --workspace
# Environment: lib.sh's (LMHOST, RUNS).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
at=(0 25 50 100 200)
lmhost=$(realpath "$lmhost")
for seed in 1 2 3; do
  mkdir -p "$runs/lmc-seed-$seed"
  LMHOST=$lmhost LMC_KEYS="seed=$seed" POINTS=30 bash "$root/docs/lmc-study.sh" "$runs/lmc-seed-$seed" 489 "${at[@]}" |
    tee >(cat >&2) | sed -n 's/^barrier:val \([^ ]*\).*/\1/p' >"$runs/lmc-seed-$seed/barriers"
done

python3 - "$runs" "${at[@]}" <<'PY'
import statistics, sys
runs, at = sys.argv[1], sys.argv[2:]
barriers = [[float(x) for x in open(f"{runs}/lmc-seed-{s}/barriers").read().split()] for s in (1, 2, 3)]
print("| branched at step | parent seed 1 | seed 2 | seed 3 | mean ± std |")
print("| --- | --- | --- | --- | --- |")
for i, step in enumerate(at):
    column = [b[i] for b in barriers]
    print(f"| {step} | " + " | ".join(f"{x:.4f}" for x in column) + f" | {statistics.mean(column):.4f} ± {statistics.stdev(column):.4f} |")
PY
