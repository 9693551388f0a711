# Shared by the study scripts: where things are, the protocol's fixed keys,
# and reading what lmhost printed or wrote. Sourced, not run.
# Environment: LMHOST (the binary), PLUGINS (the folder of NAME.so), RUNS (default: studies).
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
lmhost=${LMHOST:-$root/target/release/lmhost}
plugins=${PLUGINS:-$root/plugins}
runs=${RUNS:-studies}
reports=$(dirname "$runs")/reports
# Every run of a study: a 10 % test split beside validation, an evaluation every 100 steps.
common=(test_fraction=0.1 eval_every=100)
# The tune: the preset's lr × ¼, ½, 1, 2, 4, 489 steps (0.5M tokens), one seed.
tune_budget=(seeds=1 steps=489 "${common[@]}" --runs-dir "$runs")

# lmhost's output, shown as it comes and searched for a line `PREFIX<path>`: the last path.
# (`tee >(cat >&2)`, not `tee /dev/stderr`: reopening stderr truncates a log file it points to.)
printed() { tee >(cat >&2) | sed -n "s/^$1//p" | tail -n1; }

# The lrs a tune picked (on validation loss), baseline first, from its report: `lmhost tune … |
# printed 'report: '` gives the report's page.
picks() {
  python3 -c 'import json, sys; print(" ".join(str(a["picked"]) for a in sorted(json.load(open(sys.argv[1]))["arms"], key=lambda a: not a["is_baseline"])))' "$(dirname "$1")/report.json"
}

# The run folders lmhost printed (trained, resumed, or a finished twin reused), one per line.
run_folders() {
  tee >(cat >&2) | sed -n -E 's/^arm:[^ ]+ (run:|reusing |resuming the interrupted )([^ ]+).*/\2/p' | sort -u
}

# A study's comparison: `compare_on_test NAME REFERENCE_RUNS OTHER_RUNS [compare options…]`, on
# the test split, against the reference's first run, into RUNS/../reports/NAME.
compare_on_test() {
  # shellcheck disable=SC2086 # one run folder per word
  "$lmhost" compare $2 $3 --baseline "$(sed -n 1p <<<"$2")" --split test --out "$reports/$1" --overwrite "${@:4}"
}
