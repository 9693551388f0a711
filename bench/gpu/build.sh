#!/usr/bin/env bash
# Builds the CUDA lmhost for the GPU check on a machine without a GPU or a CUDA toolkit, and
# packs what check.sh needs into bench/gpu/dist/ (binary, token caches): see README.md.
#
#   bench/gpu/build.sh            # build + pack (≈ 25 min cold on 2 cores, then seconds)
#   bench/gpu/build.sh --check    # build only: what CI and the stop hook run
#
# The toolkit is CUDA 13.0 from PyPI's wheels (nvcc, its NVVM and C runtime headers, the
# runtime, CCCL: ~105 MB): the GPU machine's driver is CUDA 13.0, which cannot load PTX written
# by a newer nvcc, and cudarc 0.19 knows CUDA up to 13.4. cuBLAS, cuRAND, NVRTC and the driver
# are loaded at run time (cudarc's dynamic loading), so nothing of them is needed here.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
mode=${1:-pack}

toolkit=${LMHOST_CUDA_TOOLKIT:-$root/target/cuda-toolkit}
export CUDA_HOME=$toolkit/nvidia/cu13
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "cuda: fetching the CUDA 13.0 toolkit wheels into $toolkit" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --no-compile --target "$toolkit" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
fi
# The wheels ship versioned libraries only; the link of candle-kernels' libmoe asks for -lcudart.
ln -sf libcudart.so.13 "$CUDA_HOME/lib/libcudart.so"

export PATH=$CUDA_HOME/bin:$PATH
export LIBRARY_PATH=$CUDA_HOME/lib${LIBRARY_PATH:+:$LIBRARY_PATH}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}   # H100/H200 (sm_90a); 80 for an A100
export CUDARC_CUDA_VERSION=13000
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc)}
target=$root/target/cuda
start=$(date +%s)
cargo build --release -p lmhost --features cuda --target-dir "$target"
echo "cuda: built $target/release/lmhost in $(( $(date +%s) - start )) s" >&2
[ "$mode" = --check ] && exit 0

dist=$root/bench/gpu/dist
rm -rf "$dist"
mkdir -p "$dist/cache"
# Stripped it is ~75 MB (candle's kernels as PTX and SASS), over what travels; xz takes it to
# ~13 MB, and check.sh unpacks it with Python's lzma (the GPU machine may have no xz).
strip -o "$dist/lmhost" "$target/release/lmhost"
xz -T0 -6 "$dist/lmhost"
# Token caches for the presets the check trains, made here with the CPU build (the GPU machine
# has no Rust and the CUDA binary needs a driver to start).
cargo build --release -p lmhost
for preset in tiny small gpt2; do
  LMHOST_CACHE=$dist/cache target/release/lmhost run baseline --preset "$preset" --dry-run --runs-dir "$dist/runs" >/dev/null
done
cp bench/gpu/check.sh bench/gpu/reference.py "$dist/"
du -sh "$dist" >&2
size=$(du -sm "$dist" | cut -f1)
if [ "$size" -gt 56 ]; then
  echo "cuda: $dist is $size MiB; what travels to the GPU machine must stay under 64 MiB with the repository" >&2
  exit 1
fi
echo "cuda: packed $dist; on the GPU machine: bash bench/gpu/dist/check.sh" >&2
