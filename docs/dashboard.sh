#!/usr/bin/env bash
# Makes docs/dashboard.png, the README's picture of `lmhost serve`: a sweep of value_norm over two
# learning rates × three seeds (tiny model, 60 steps), served, opened in headless Chromium grouped
# by plugin and lr with every run selected (the seed bands), and screenshotted.
#
#   bash docs/dashboard.sh            # from the checkout, after cargo build --release --workspace
set -euo pipefail
cd "$(dirname "$0")/.."
lmhost=$PWD/target/release/lmhost
chromium=${LMHOST_CHROMIUM:-$(command -v chromium || command -v chromium-browser)}
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
"$lmhost" run "$OLDPWD/plugins/value_norm.so" n_layer=2 n_embd=64 n_head=2 context_length=64 \
  steps=60 eval_every=10 log_every=5 lr=1e-3,3e-3 seeds=3 --no-report >/dev/null
"$lmhost" serve runs --port 0 > serve.log &
server=$!
until grep -q serving serve.log; do sleep 0.2; done
url=$(awk '{print $2; exit}' serve.log)
keys=$(curl -s "${url}api/runs" | python3 -c 'import json,sys; print(",".join(r["key"] for r in json.load(sys.stdin)["runs"]))')
"$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1500,1700 \
  --virtual-time-budget=10000 --user-data-dir="$work/profile" \
  --screenshot="$OLDPWD/docs/dashboard.png" "${url}#runs=${keys}&group=plugin,lr&x=tokens" 2>/dev/null
echo "wrote docs/dashboard.png"
