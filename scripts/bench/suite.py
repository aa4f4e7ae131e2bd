"""Run every llmft benchmark, then rewrite benchmarks/README.md from the saved results.

    python scripts/bench/suite.py [--samples 3] [--only startup overhead ...] [--allow-dirty]

Runs each `scripts/bench/<name>.py` in turn, in its own process (so one benchmark's memory or
threads never leak into the next), with the same --samples. Each refuses an uncommitted tree
unless --allow-dirty (then its result is marked DIRTY). The TRL comparison needs the `bench`
extra (`pip install -e '.[bench]'`). A benchmark that fails is reported and the others still run;
the exit code is non-zero if any failed. Run it when nothing else uses the cores: other work
slows every arm.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

# Cheapest first, so a short session still ends with some results. data_prep is the data benchmarks'.
BENCHMARKS = ["startup", "overhead", "eval_throughput", "packing", "workers", "trl_vs_llmft", "data_prep"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=common.MIN_SAMPLES)
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS)
    parser.add_argument("--allow-dirty", action="store_true")
    args = parser.parse_args()
    failed = []
    for name in [b for b in BENCHMARKS if b in args.only]:
        command = [sys.executable, str(common.REPO / "scripts" / "bench" / f"{name}.py")]
        if name != "data_prep":  # the data benchmark has options of its own
            command += ["--samples", str(args.samples)] + (["--allow-dirty"] if args.allow_dirty else [])
        if name == "startup":
            command.append("--fresh-check")
        print(f"=== {name}: {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, cwd=common.REPO)
        print(f"=== {name}: exit {done.returncode} after {time.perf_counter() - started:.0f} s", flush=True)
        if done.returncode != 0:
            failed.append(name)
    common.rewrite_readme()
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
