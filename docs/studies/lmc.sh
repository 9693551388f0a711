#!/usr/bin/env bash
# docs/studies/lmc.md: linear mode connectivity (lmc-transformers; Frankle et al. 2020's
# "stability to SGD noise"). Three parents (seeds 1-3) of lmhost's baseline at its tuned lr
# (1e-3), tiny preset, 489 steps (0.5M tokens); from each, two children branched at steps
# 0, 25, 50, 100 and 200 that differ only in data order, trained to step 489; each pair
# interpolated at 30 α on the validation windows (docs/lmc-study.sh, once per parent, in
# RUNS/lmc-seed-N, its report in RUNS/lmc-seed-N/report). Then one table from the three reports:
# the barrier and the rise above the line at each branch step, per parent and their mean.
# Run again, a parent whose report exists is not trained again.
#
#   bash docs/studies/lmc.sh        # after cargo build --release --workspace
# Environment: lib.sh's (LMHOST, RUNS).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
lmhost=$(realpath "$lmhost")
for seed in 1 2 3; do
  if [ ! -f "$runs/lmc-seed-$seed/report/report.md" ]; then
    LMHOST=$lmhost LMC_KEYS="seed=$seed" POINTS=30 bash "$root/docs/lmc-study.sh" "$runs/lmc-seed-$seed" 489 0 25 50 100 200
  fi
done

# Each report's paths (report.json: interpolations[].branched_at and .barriers.val).
python3 - "$runs" <<'PY'
import json, statistics, sys
rows = {}
for seed in (1, 2, 3):
    for path in json.load(open(f"{sys.argv[1]}/lmc-seed-{seed}/report/report.json"))["interpolations"]:
        val = path["barriers"]["val"]
        rows.setdefault(path["branched_at"], []).append((val["barrier"], val["above_line"]))
print("| branched at step | barrier, parents 1 / 2 / 3 | mean ± std | above the line, parents 1 / 2 / 3 | mean |")
print("| --- | --- | --- | --- | --- |")
for step, pairs in sorted(rows.items()):
    barriers, above = [p[0] for p in pairs], [p[1] for p in pairs]
    print(f"| {step} | " + " / ".join(f"{x:.4f}" for x in barriers)
          + f" | {statistics.mean(barriers):.4f} ± {statistics.stdev(barriers):.4f} | "
          + " / ".join(f"{x:.4f}" for x in above) + f" | {statistics.mean(above):.4f} |")
PY
