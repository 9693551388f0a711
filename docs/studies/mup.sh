#!/usr/bin/env bash
# docs/studies/mup.md: μP against the standard parametrisation at three warmup lengths
# (mup-lr-warmup: μP beats SP at every warmup, and warmup matters less under μP). Tiny preset
# (width 256; μP anchored at mup_base_width 64, so m = 4), warmup and decay counted in tokens.
# For each warmup W (0, 51,200 and 204,800 tokens: 0, 10 % and 40 % of the run):
#   1. a tune of lr, 5e-4 … 8e-3 (×2 apart, --extend past an edge), 489 steps (0.5M tokens),
#      seed 1: the plugin's μP arm and lmhost's baseline, which is SP (the plugin's `sp` is it);
#   2. each arm at its pick, seeds 1-3 (seed 1 is the tune's run, reused);
#   3. the six runs compared on the test split (RUNS/../reports/mup-warmup-W).
# Then one table: each arm's test loss at each warmup, and its spread across warmups.
# Run again, it trains only what is missing (same binary and plugin library).
#
#   bash docs/studies/mup.sh        # after cargo build --release --workspace
# Environment: lib.sh's (LMHOST, PLUGINS, RUNS), SEEDS (default 3).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
plugin=$plugins/mup.so
grid=lr=5e-4,1e-3,2e-3,4e-3,8e-3
final=(steps=489 seeds="${SEEDS:-3}" "${common[@]}" --skip-finished --runs-dir "$runs")

for warmup in 0 51200 204800; do
  schedule=(warmup="$warmup" warmup_unit=tokens)
  # 1. The tune; its report names each arm's pick, SP's first.
  tune_report=$("$lmhost" tune "$plugin" variant=mup "${schedule[@]}" "$grid" --extend "${tune_budget[@]}" | printed 'report: ')
  read -r sp_lr mup_lr <<<"$(picks "$tune_report")"
  echo "mup: warmup $warmup tokens: sp lr=$sp_lr, mup lr=$mup_lr" >&2
  # 2. Each arm at its pick.
  sp_runs=$("$lmhost" run baseline "${schedule[@]}" lr="$sp_lr" "${final[@]}" | run_folders)
  mup_runs=$("$lmhost" run "$plugin" variant=mup "${schedule[@]}" lr="$mup_lr" --no-baseline "${final[@]}" | run_folders)
  # 3. On the test split.
  compare_on_test "mup-warmup-$warmup" "$sp_runs" "$mup_runs"
done

# Each arm's test loss (mean ± std over seeds) at each warmup, and its spread across them.
python3 - "$reports" <<'PY'
import json, sys
rows = {}
for warmup in (0, 51200, 204800):
    for s in json.load(open(f"{sys.argv[1]}/mup-warmup-{warmup}/report.json"))["summaries"]:
        arm = "SP (baseline)" if s["is_baseline"] else "μP"
        rows.setdefault(arm, []).append((s["loss_mean"], s["loss_std"], s["difference"], s["p_value"]))
print("| arm | warmup 0 | warmup 51,200 | warmup 204,800 | spread (max − min) |")
print("| --- | --- | --- | --- | --- |")
for arm, cells in rows.items():
    means = [c[0] for c in cells]
    shown = [f"{m:.4f} ± {sd:.4f}" + ("" if d is None else f" (Δ {d:+.4f}, p {p:.3f})") for m, sd, d, p in cells]
    print(f"| {arm} | " + " | ".join(shown) + f" | {max(means) - min(means):.4f} |")
PY
