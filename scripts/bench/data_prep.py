"""Data preparation speed: `tokenize_split` cold (cache miss) and its first cache hit in a new process.

    python scripts/bench/data_prep.py [--rows 20000] [--repeats 3] [--tokenizer smollm2|small]

Writes ViGGO-size rows (llmft's sample ViGGO train rows, replicated to `--rows`) to a JSONL file
and runs `llmft.data.tokenize.tokenize_split` on it, as `llmft prepare` and `llmft train` do:
read and check the rows, format them, tokenize with offsets, label, apply the length policy and
write the Parquet shards. Cold runs start from an empty cache folder, with the process pool over
all CPUs (the default) and, interleaved with them, with one process. The cache hit runs in a
new Python process, as `llmft train` after `llmft prepare` does: the timed part is importing
`llmft.data.tokenize` plus the call (the tokenizer is loaded before, untimed); a second new
process times the parts of a hit one by one. The tokenizer load is never timed.
Goals (issue #14, goal 6): cold >= 15,000 examples/s on 2 cores, first cache hit <= 1 s.
Refuses to save a result from a tree with uncommitted changes (pass --dirty to measure anyway).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

COLD_GOAL = 15000.0
HIT_GOAL_SECONDS = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer", choices=["smollm2", "small"], default="smollm2")
    parser.add_argument("--dirty", action="store_true", help="measure a tree with uncommitted changes (not saved)")
    args = parser.parse_args()
    tree = refuse_dirty_tree(args.dirty, args.repeats)

    from llmft.data.tokenize import _usable_cpus
    from llmft.models.tokenizer import load_task_tokenizer

    model = common.smollm2() if args.tokenizer == "smollm2" else common.small_llama()
    with tempfile.TemporaryDirectory(prefix="llmft-bench-data-") as tmp:
        data_file = Path(tmp) / "viggo-train.jsonl"
        write_replicated_rows(args.rows, data_file)
        tokenizer = load_task_tokenizer(bench_config(model, data_file, Path(tmp) / "unused"))
        arms = {"pool": _usable_cpus(), "one process": 1}
        cold: dict[str, list[float]] = {arm: [] for arm in arms}
        for repeat in range(args.repeats):
            for arm, processes in arms.items():
                seconds, table = cold_tokenize(model, data_file, Path(tmp) / f"cache-{arm}-{repeat}", tokenizer, processes)
                cold[arm].append(seconds)
                print(f"cold, {arm} ({processes}): {seconds:.2f} s, {args.rows / seconds:,.0f} examples/s", flush=True)
        cache = Path(tmp) / f"cache-pool-{args.repeats - 1}"
        hits, parts = [], []
        for _ in range(args.repeats):
            hits.append(cache_hit_in_new_process(model, data_file, cache, "call"))
            parts.append(cache_hit_in_new_process(model, data_file, cache, "parts"))
            print(f"first cache hit in a new process: {hits[-1]['seconds']:.3f} s", flush=True)
        tokens = int(sum(table.column("length").to_numpy()))
        shards = sorted(cache.glob("tokenized/*/part-*.parquet"))
        parquet_mb = sum(p.stat().st_size for p in shards) / 1e6  # before the caches are removed below
        jsonl_mb = data_file.stat().st_size / 1e6
        for repeat in range(args.repeats):
            for arm in arms:
                shutil.rmtree(Path(tmp) / f"cache-{arm}-{repeat}", ignore_errors=True)

    pool = samples(cold["pool"])
    one = samples(cold["one process"])
    hit = samples([h["seconds"] for h in hits])
    breakdown = {key: samples([p[key] for p in parts])["median"] for key in parts[0]}
    cold_rate = args.rows / pool["median"]
    print()
    common.print_table(["case", "min s", "median s", "max s", "examples/s (median)"], [
        [f"cold, pool of {arms['pool']}", f"{pool['min']:.2f}", f"{pool['median']:.2f}", f"{pool['max']:.2f}", f"{cold_rate:,.0f}"],
        ["cold, one process", f"{one['min']:.2f}", f"{one['median']:.2f}", f"{one['max']:.2f}", f"{args.rows / one['median']:,.0f}"],
        ["first cache hit, new process", f"{hit['min']:.3f}", f"{hit['median']:.3f}", f"{hit['max']:.3f}", ""],
    ])
    print("cache hit parts (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in breakdown.items()))
    summary = [
        common.summary_row(f"cold tokenize_split, {args.rows:,} ViGGO-size examples ({args.tokenizer} tokenizer, "
                           f"{arms['pool']} processes)", f"{cold_rate:,.0f} examples/s",
                           f">= {COLD_GOAL:,.0f}/s on 2 cores", cold_rate >= COLD_GOAL),
        common.summary_row("cold, pool / one process (median times)", f"{one['median'] / pool['median']:.2f}x"),
        common.summary_row("first cache hit in a new process (import + call)", f"{hit['median']:.2f} s",
                           f"<= {HIT_GOAL_SECONDS:g} s", hit["median"] <= HIT_GOAL_SECONDS),
    ]
    if args.dirty:
        print("\nnot saved: the tree has uncommitted changes")
        return
    path = common.write_result("data_prep", {
        "setup": {"rows": args.rows, "rows_kept": table.num_rows, "tokens": tokens, "jsonl_mb": round(jsonl_mb, 2),
                  "parquet_shards": len(shards), "parquet_mb": round(parquet_mb, 2),
                  "tokenizer": args.tokenizer, "max_length": 512, "repeats": args.repeats,
                  "timed": "cold: tokenize_split(cfg, tokenizer, 'train') on an empty cache, arms interleaved; "
                           "hit: import llmft.data.tokenize + tokenize_split in a new process; tokenizer load excluded"},
        "cold_seconds": cold, "cold_pool": pool, "cold_one_process": one, "cold_examples_per_second": cold_rate,
        "cache_hit_seconds": hit, "cache_hit_parts_median_seconds": breakdown, "summary": summary,
        "load_average_at_end": list(os.getloadavg())}, tree=tree)
    print(f"\nsaved {path}")


# ----------------------------------------------------------------------------- shared with data_scale.py


def refuse_dirty_tree(dirty_ok: bool, repeats: int) -> dict:
    """The tree's state for the result (see common.tree_state); exits on uncommitted changes unless told."""
    tree = common.tree_state(repeats)
    if tree["git_dirty"] and not dirty_ok:
        sys.exit("The tree has uncommitted changes: commit first (results come from a committed tree), "
                 "or pass --dirty to measure without saving.")
    return tree


def samples(values: list[float]) -> dict[str, float]:
    """Min, median and max of a figure's samples."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def write_replicated_rows(count: int, path: Path) -> None:
    """`count` JSONL rows cycling through llmft's 3,000 sample ViGGO train rows."""
    from llmft.data.samples import generate_rows

    lines = [json.dumps(row) + "\n" for row in generate_rows("viggo", "train")]
    with path.open("w") as handle:
        for start in range(0, count, len(lines)):
            handle.writelines(lines[:min(len(lines), count - start)])


def bench_config(model: Path, data_file: Path, cache_dir: Path, processes: int | None = None):
    from llmft.config import load_config

    overrides = [f"model.name_or_path={model}", f"data.train={data_file}", "data.valid=null",
                 "data.max_length=512", f"data.cache_dir={cache_dir}"]
    if processes:
        overrides.append(f"data.tokenize_processes={processes}")
    return load_config(common.TINY_CONFIG, overrides)


def cold_tokenize(model: Path, data_file: Path, cache_dir: Path, tokenizer, processes: int):
    """Seconds of one `tokenize_split` on an empty cache, and its table."""
    from llmft.data.tokenize import tokenize_split

    shutil.rmtree(cache_dir, ignore_errors=True)
    cfg = bench_config(model, data_file, cache_dir, processes)
    start = time.perf_counter()
    table = tokenize_split(cfg, tokenizer, "train")
    return time.perf_counter() - start, table


_PROBE = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {bench_dir!r})
import data_prep
cfg = data_prep.bench_config(Path({model!r}), Path({data!r}), Path({cache!r}))
from llmft.models.tokenizer import load_task_tokenizer
tokenizer = load_task_tokenizer(cfg)
if {mode!r} == "call":
    start = time.perf_counter()
    from llmft.data.tokenize import tokenize_split
    table = tokenize_split(cfg, tokenizer, "train")
    print(json.dumps({{"seconds": time.perf_counter() - start, "rows": table.num_rows}}))
else:
    times, last = {{}}, time.perf_counter()
    def lap(name):
        global last
        now = time.perf_counter(); times[name] = now - last; last = now
    from llmft.data import tokenize
    lap("import")
    tokenize.tokenizer_fingerprint(tokenizer); lap("tokenizer fingerprint")
    from llmft.data.sources import source_fingerprint
    source_fingerprint(cfg, "train"); lap("data fingerprint")
    folder = tokenize.cache_path(cfg, tokenizer, "train"); lap("rest of the key")
    tokenize.read_cached(folder); lap("read shards")
    print(json.dumps(times))
"""


def cache_hit_in_new_process(model: Path, data_file: Path, cache: Path, mode: str) -> dict[str, float]:
    """A cache hit in a fresh Python process: `call` times import + tokenize_split, `parts` its parts."""
    code = _PROBE.format(bench_dir=str(Path(__file__).resolve().parent), model=str(model), data=str(data_file),
                         cache=str(cache), mode=mode)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
