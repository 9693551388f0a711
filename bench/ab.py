"""Paired A/B benchmark: `lmhost bench` and the PyTorch reference (`bench/pytorch_gpt.py`) run
alternately (A B A B ...) so that both see the same machine state, and the ratio is taken within
each pair. Prints each run's tokens/s and peak RSS, each pair's ratio, and the medians.

    cargo build --release -p lmhost
    python bench/ab.py --preset tiny --pairs 5

Needs PyTorch (`pip install torch`; see bench/README.md).
"""

import argparse
import pathlib
import re
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
LINE = re.compile(r"tokens/s: median (\d+) .*peak_rss_mb: (\d+)")


def measure(command):
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    found = LINE.search(out.stdout)
    if out.returncode != 0 or not found:
        sys.exit(f"{' '.join(command)} failed:\n{out.stdout}\n{out.stderr}")
    return int(found.group(1)), int(found.group(2))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lmhost", default=str(ROOT / "target/release/lmhost"))
    args = parser.parse_args()
    steps = ["--steps", str(args.steps)]
    lmhost = [args.lmhost, "bench", "--preset", args.preset, *steps]
    torch = [sys.executable, str(ROOT / "bench/pytorch_gpt.py"), "--preset", args.preset, *steps]
    print(f"{'pair':>4} {'lmhost tok/s':>12} {'pytorch tok/s':>13} {'ratio':>6} {'lmhost MB':>9} {'pytorch MB':>10}")
    rows = []
    for pair in range(1, args.pairs + 1):
        ours, ours_mb = measure(lmhost)
        theirs, theirs_mb = measure(torch)
        rows.append((ours, theirs, ours / theirs, ours_mb, theirs_mb))
        print(f"{pair:>4} {ours:>12} {theirs:>13} {ours / theirs:>6.2f} {ours_mb:>9} {theirs_mb:>10}", flush=True)
    med = lambda i: statistics.median(r[i] for r in rows)
    print(f"median {med(0):>10.0f} {med(1):>13.0f} {med(2):>6.2f} {med(3):>9.0f} {med(4):>10.0f}")


if __name__ == "__main__":
    main()
