"""Data preparation throughput: `tokenize_split` cold (cache miss) and from its cache.

    python scripts/bench/data_prep.py [--rows 20000] [--repeats 3] [--tokenizer smollm2|small]

Writes ViGGO-size rows (llmft's sample ViGGO train rows, replicated to `--rows`) to a JSONL file
and runs `llmft.data.tokenize.tokenize_split` on it, as `llmft prepare` and `llmft train` do:
read and check the rows, format them, tokenize with offsets, label, apply the length policy and
write the Parquet cache. Cold runs use an empty cache folder each time (the median is reported);
the cache hit is the same call again. The tokenizer is loaded once beforehand and not timed.
Goal: at least 5,000 examples/s cold on 2 cores, a cache hit under 2 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

COLD_GOAL = 5000.0
HIT_GOAL_SECONDS = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer", choices=["smollm2", "small"], default="smollm2")
    args = parser.parse_args()
    started_load = common.machine_info()["load_average"]

    from llmft.config import load_config
    from llmft.data.tokenize import tokenize_split
    from llmft.models.tokenizer import load_task_tokenizer
    from llmft.data.samples import generate_rows

    model = common.smollm2() if args.tokenizer == "smollm2" else common.small_llama()
    with tempfile.TemporaryDirectory(prefix="llmft-bench-data-") as tmp:
        data_file = Path(tmp) / "viggo-train.jsonl"
        write_replicated_rows(generate_rows("viggo", "train"), args.rows, data_file)
        size_mb = data_file.stat().st_size / 1e6

        def config(cache_dir: Path):
            return load_config(common.TINY_CONFIG, [f"model.name_or_path={model}", f"data.train={data_file}",
                                                    "data.valid=null", "data.max_length=512",
                                                    f"data.cache_dir={cache_dir}"])

        tokenizer = load_task_tokenizer(config(Path(tmp) / "cache-0"))
        cold_seconds, rows_out = [], 0
        for repeat in range(args.repeats):
            cache = Path(tmp) / f"cache-{repeat}"
            cfg = config(cache)
            start = time.perf_counter()
            table = tokenize_split(cfg, tokenizer, "train")
            cold_seconds.append(time.perf_counter() - start)
            rows_out = table.num_rows
            print(f"cold run {repeat + 1}: {cold_seconds[-1]:.2f} s, {args.rows / cold_seconds[-1]:,.0f} examples/s",
                  flush=True)
        hit_seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            hit = tokenize_split(cfg, tokenizer, "train")
            hit_seconds.append(time.perf_counter() - start)
        assert hit.num_rows == rows_out
        tokens = sum(hit.column("length").to_pylist())
        cache_mb = sum(p.stat().st_size for p in (cache / "tokenized").glob("*.parquet")) / 1e6
        shutil.rmtree(cache, ignore_errors=True)

    cold = statistics.median(cold_seconds)
    hit_median = statistics.median(hit_seconds)
    cold_rate = args.rows / cold
    print()
    common.print_table(["case", "seconds", "examples/s"],
                       [["cold (median)", f"{cold:.2f}", f"{cold_rate:,.0f}"],
                        ["cache hit (median)", f"{hit_median:.3f}", f"{args.rows / hit_median:,.0f}"]])
    summary = [
        common.summary_row(f"cold tokenize_split, {args.rows:,} ViGGO-size examples ({args.tokenizer} tokenizer)",
                           f"{cold_rate:,.0f} examples/s", f">= {COLD_GOAL:,.0f}/s", cold_rate >= COLD_GOAL),
        common.summary_row("cache hit, same call again", f"{hit_median:.2f} s", f"< {HIT_GOAL_SECONDS:g} s",
                           hit_median < HIT_GOAL_SECONDS),
    ]
    path = common.write_result("data_prep", {
        "setup": {"rows": args.rows, "rows_kept": rows_out, "tokens": tokens, "jsonl_mb": round(size_mb, 2),
                  "parquet_mb": round(cache_mb, 2), "tokenizer": args.tokenizer, "max_length": 512,
                  "repeats": args.repeats, "timed": "tokenize_split(cfg, tokenizer, 'train'); tokenizer load excluded"},
        "cold_seconds": cold_seconds, "cache_hit_seconds": hit_seconds,
        "cold_examples_per_second": cold_rate, "summary": summary}, started_load=started_load)
    print(f"\nsaved {path}")


def write_replicated_rows(rows: list[dict], count: int, path: Path) -> None:
    """`count` rows cycling through `rows`, as JSONL."""
    with path.open("w") as handle:
        for index in range(count):
            handle.write(json.dumps(rows[index % len(rows)]) + "\n")


if __name__ == "__main__":
    main()
