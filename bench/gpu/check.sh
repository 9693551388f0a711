#!/usr/bin/env bash
# The GPU check (bench/gpu/README.md). Runs on a GPU machine with PyTorch and no Rust or
# network, from the folder build.sh packed (bench/gpu/dist: this script, the CUDA lmhost, its
# token caches, reference.py), in about 5 minutes on an H100/H200:
#   (a) the prebuilt lmhost on --device cuda:0,
#   (b) CUDA and CPU losses over the first 30 steps of the tiny preset: f32 within 0.01 nats of
#       the CPU at every step, bf16-mixed within 0.1 (both printed),
#   (c) tokens/s, the step's phases, its op and read-back counts and MFU for `small` and `gpt2`
#       in f32, tf32 and bf16-mixed,
#   (d) the nanoGPT-style PyTorch reference on the same GPU, and lmhost's ratio to it.
# Everything it prints is also written to $OUT (or ./gpu-check/) as gpu-check.log and
# gpu-check.md.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$PWD/gpu-check}
mkdir -p "$out"
log=$out/gpu-check.log
exec > >(tee "$log") 2>&1
lmhost=$here/lmhost
if [ ! -x "$lmhost" ]; then
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$lmhost.xz" "$lmhost"
  chmod +x "$lmhost"
fi
export LMHOST_CACHE=$here/cache
export PYTHONUNBUFFERED=1
# cuBLAS, cuRAND, NVRTC and the CUDA runtime: PyTorch's own copies (lmhost loads them at run time).
nvidia_libs=$(python3 -c "import glob, site; print(':'.join(sorted({p for s in site.getsitepackages() for p in glob.glob(s + '/nvidia/*/lib')})))")
export LD_LIBRARY_PATH=$nvidia_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
work=$(mktemp -d)
started=$(date +%s)
since() { echo "[$(( $(date +%s) - started )) s]"; }

echo "== (a) the machine and the binary $(since)"
nvidia-smi -L || true
"$lmhost" --version || { echo "the CUDA lmhost does not start (ldd below)"; ldd "$lmhost"; exit 1; }

echo "== (b) CUDA against CPU, tiny preset, 30 steps $(since)"
train() { # NAME DEVICE PRECISION
  "$lmhost" run baseline --preset tiny --runs-dir "$work/$1" --device "$2" "precision=$3" \
    steps=30 eval_every=10 log_every=10 >"$work/$1.log" 2>&1 || { cat "$work/$1.log"; return 1; }
}
train cpu cpu f32 && train cuda-f32 cuda:0 f32 && train cuda-bf16 cuda:0 bf16-mixed
agree=$(python3 - "$work" <<'EOF'
import glob, sys
import pyarrow.ipc as ipc
work = sys.argv[1]
def losses(name):
    t = ipc.open_stream(open(glob.glob(f"{work}/{name}/*/stats.arrows")[0], "rb")).read_all().to_pandas()
    t = t[t.metric.isna()]
    return list(t[t.split == "train"].loss), list(t[t.split == "val"].loss)
cpu = losses("cpu")
ok = True
for name, tolerance in [("cuda-f32", 0.01), ("cuda-bf16", 0.1)]:
    other = losses(name)
    worst = max(abs(a - b) for a, b in zip(cpu[0] + cpu[1], other[0] + other[1]))
    ok &= worst <= tolerance
    print(f"{name}: max |Δ loss| vs CPU f32 over 30 steps and 4 evaluations: {worst:.5f} (tolerance {tolerance}) "
          f"final val {other[1][-1]:.4f} vs {cpu[1][-1]:.4f} -> {'ok' if worst <= tolerance else 'FAILED'}")
sys.exit(0 if ok else 1)
EOF
) ; status=$?
echo "$agree"

echo "== (c) lmhost speed $(since)"
declare -A peak=([f32]=66.9 [tf32]=494.7 [bf16-mixed]=989.4)   # H100/H200 SXM dense TFLOP/s
rows=()
for preset in small gpt2; do
  for precision in f32 tf32 bf16-mixed; do
    line=$("$lmhost" bench --preset $preset --steps 10 --warmup 3 --phases --peak-tflops "${peak[$precision]}" \
      device=cuda:0 "precision=$precision" 2>&1) || { echo "$line"; status=1; continue; }
    echo "$line"
    tps=$(sed -n 's/^tokens\/s: median \([0-9]*\).*/\1/p' <<<"$line")
    mfu=$(sed -n 's/^mfu: \([0-9.]*\)%.*/\1/p' <<<"$line")
    rows+=("| lmhost | $preset | $precision | $tps | $mfu % |")
  done
done

echo "== (d) the PyTorch reference $(since)"
declare -A reference
for preset in small gpt2; do
  line=$(python3 "$here/reference.py" --preset $preset --steps 10 --warmup 3 2>&1) || { echo "$line"; status=1; continue; }
  echo "$line"
  reference[$preset]=$(sed -n 's/^tokens\/s: median \([0-9]*\).*/\1/p' <<<"$line")
  mfu=$(sed -n 's/^mfu: \([0-9.]*\)%.*/\1/p' <<<"$line")
  rows+=("| PyTorch (bf16 autocast, SDPA, fused AdamW) | $preset | bf16-mixed | ${reference[$preset]} | $mfu % |")
done

{
  echo "# GPU check, $(date -u +%Y-%m-%d) on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
  echo
  echo '```'
  echo "$agree"
  echo '```'
  echo
  echo "| what | preset | precision | tokens/s (median of 10 steps) | MFU |"
  echo "| --- | --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
  for preset in small gpt2; do
    ours=$(printf '%s\n' "${rows[@]}" | awk -F'|' -v p=" $preset " '$2 == " lmhost " && $3 == p && $4 == " bf16-mixed " {print $5}' | tr -d ' ')
    if [ -n "$ours" ] && [ -n "${reference[$preset]:-}" ]; then
      echo
      echo "$preset, bf16-mixed: lmhost / PyTorch = $(python3 -c "print(f'{$ours / ${reference[$preset]}:.2f}')")"
    fi
  done
} >"$out/gpu-check.md"
cat "$out/gpu-check.md"
echo "== done $(since); status $status"
rm -rf "$work"
exit $status
