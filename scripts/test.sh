#!/usr/bin/env bash
# The tests, set up on a fresh machine: finds (or installs) what the end-to-end tests use beside
# Rust — headless Chromium and its chromedriver, OpenBLAS and BLIS, and pyarrow, pandas, polars and DuckDB in a private folder — then runs
# `cargo test --release --workspace` with them. CI runs exactly this (.ci/run).
#
#   scripts/test.sh                  # the whole suite
#   scripts/test.sh -p reports       # arguments go to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."

# Chromium renders reports in one test and drives the dashboard in others.
chromium=""
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null 2>&1; then chromium=$(command -v "$name"); break; fi
done
if [ -z "$chromium" ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
    echo "test: installing Chromium (apt-get install chromium)" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
    chromium=$(command -v chromium)
  else
    echo "test: Chromium is needed (apt-get install chromium, or put chromium on PATH)" >&2
    exit 1
  fi
fi
export LMHOST_CHROMIUM=$chromium

# chromedriver drives that Chromium in the dashboard's tests (WebDriver); Debian's matches its Chromium.
chromedriver=""
for name in chromedriver chromium-driver; do
  if command -v "$name" >/dev/null 2>&1; then chromedriver=$(command -v "$name"); break; fi
done
if [ -z "$chromedriver" ] && [ -x /usr/lib/chromium/chromedriver ]; then chromedriver=/usr/lib/chromium/chromedriver; fi
if [ -z "$chromedriver" ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
    echo "test: installing chromedriver (apt-get install chromium-driver)" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium-driver >/dev/null
    chromedriver=$(command -v chromedriver)
  else
    echo "test: chromedriver is needed (apt-get install chromium-driver, or put chromedriver on PATH)" >&2
    exit 1
  fi
fi
export LMHOST_CHROMEDRIVER=$chromedriver

# A BLAS for the CPU's matrix products (lmhost loads one at run time where installed, and uses
# the gemm crate where not): installed here when apt can, so the suite tests that path, and the
# kernels' and trainer's tests run once more on each backend below.
has_openblas() { ls /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 >/dev/null 2>&1; }
if ! has_openblas; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
    echo "test: installing OpenBLAS and BLIS (apt-get install libopenblas0-pthread libblis4-serial)" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libopenblas0-pthread libblis4-serial >/dev/null
  else
    echo "test: no OpenBLAS here and no apt-get to install it: the suite tests the gemm path only" >&2
  fi
fi

# Python readers of the stats, installed privately so that nothing system-wide changes.
py=target/test-python
if ! PYTHONPATH=$py python3 -c "import pyarrow, pandas, polars, duckdb" 2>/dev/null; then
  echo "test: installing pyarrow, pandas, polars and duckdb into $py" >&2
  python3 -m pip install --quiet --disable-pip-version-check --target "$py" pyarrow pandas polars duckdb
fi
export PYTHONPATH=$PWD/$py${PYTHONPATH:+:$PYTHONPATH}

cargo test --release --workspace "$@"
if [ $# -eq 0 ]; then
  # The kernels, the products and the trainer again on each backend by name: the run above used
  # the one `auto` picks for this CPU (gemm where it has AVX-512, else the BLAS where found).
  backends=gemm
  if has_openblas; then backends="gemm openblas"; fi
  for backend in $backends; do
    echo "test: the kit's kernels and trainer with LMHOST_BLAS=$backend" >&2
    LMHOST_BLAS=$backend cargo test --release -p lmhost-kit --lib -- kernels trainer
  done
fi
