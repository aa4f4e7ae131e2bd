"""Training data at scale: how tokenisation, cache hits, worker memory, start-up and epoch plans grow.

    python scripts/bench/data_scale.py [--sizes 100000,1000000,5000000] [--repeats 3]

For each size N: N short synthetic examples (llmft's 3,000 sample ViGGO train rows, replicated;
about 53 tokens each with SmolLM2's tokenizer) in a JSONL file, and

- cold tokenisation: `tokenize_split` on an empty cache with the pool over all CPUs; at 1M also
  with one process, interleaved (goal: the pool >= 1.7x one process on 2 cores). One process is
  not one core: the Rust tokenizer runs its batches on threads of its own (the pool switches them
  off in its workers). So at 1M a third arm runs one process with those threads off as well
  (TOKENIZERS_PARALLELISM=false): pool / that arm is how many cores' worth of work the pool does;
- cache hit: import + `tokenize_split` in a new Python process (tokenizer load untimed);
- per-worker memory for the data: Ray actors on this node get the `TokenizedExamples` by object
  reference as training workers do (the driver puts `TokenizedExamples.from_table(table)`),
  plan an epoch, collate a first micro-batch and touch every token, then report their growth in
  private memory (RssAnon) and in resident pages of the object store's mapping (/dev/shm/plasma*). One
  actor alone, then two together, interleaved. Goals at 1M: a worker's growth <= 1.2x the Arrow
  bytes of the columns workers use (input_ids, labels, num_trained), and two workers together
  (both private growths + the shared pages once) < 1.5x one worker's;
- data start-up: in the actor, from receiving the reference to its first collated micro-batch
  (ray.get, plan_epoch, collate); goal <= 3 s at 1M;
- plan_epoch: in the actor, each epoch 1..repeats timed (epoch 0 is in the start-up); goal <= 2 s at 1M.

The 5M size needs about 16 GB; it is skipped (and the table says so) when less is available.
Sizes can be run one at a time (`--sizes 5000000`): results of other sizes saved from the same
commit are kept. Refuses to save a result from a tree with uncommitted changes (pass --dirty to measure anyway).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import common  # noqa: E402
import data_prep  # noqa: E402

GOAL_SIZE = 1_000_000
MEMORY_GOAL = 1.2           # a worker's data memory / Arrow bytes
SHARING_GOAL = 1.5          # two workers together / one worker
STARTUP_GOAL_SECONDS = 3.0
PLAN_GOAL_SECONDS = 2.0
POOL_GOAL = 1.7             # cold tokenisation, pool / one process
ONE_CORE = "one process, tokenizer threads off"
BYTES_NEEDED_PER_EXAMPLE = 3200  # peak of this script per example, measured at 1M (x1.3 margin)
MICRO_BATCH = 4
GLOBAL_BATCH = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000,5000000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dirty", action="store_true", help="measure a tree with uncommitted changes (not saved)")
    args = parser.parse_args()
    tree = data_prep.refuse_dirty_tree(args.dirty, args.repeats)
    sizes = [int(s) for s in args.sizes.split(",")]

    from llmft.data.tokenize import _usable_cpus
    from llmft.models.tokenizer import load_task_tokenizer

    model = common.smollm2()
    cpus = _usable_cpus()
    results = {}
    with tempfile.TemporaryDirectory(prefix="llmft-bench-scale-") as tmp:
        tokenizer = load_task_tokenizer(data_prep.bench_config(model, Path(tmp) / "unused.jsonl", Path(tmp)))
        for size in sizes:
            available = _available_bytes()
            if available < size * BYTES_NEEDED_PER_EXAMPLE:
                print(f"{size:,} examples: skipped, {available / 2**30:.1f} GiB available, "
                      f"{size * BYTES_NEEDED_PER_EXAMPLE / 2**30:.1f} GiB needed", flush=True)
                results[size] = {"skipped": f"{available / 2**30:.1f} GiB available"}
                continue
            print(f"\n{size:,} examples", flush=True)
            load_before = list(os.getloadavg())
            results[size] = measure_size(size, Path(tmp), model, tokenizer, cpus, args.repeats)
            results[size]["load_average"] = {"start": load_before, "end": list(os.getloadavg())}
            gc.collect()

    results = earlier_sizes_of_this_commit(tree["git_commit"]) | results
    results = dict(sorted(results.items()))
    rows, summary = table_rows(results, cpus)
    print()
    common.print_table(["examples", "cold tokenize (pool)", "examples/s", "pool / 1 process", "cache hit",
                        "worker data memory", "vs Arrow bytes", "2 workers / 1", "data start-up", "plan_epoch"], rows)
    if args.dirty:
        print("\nnot saved: the tree has uncommitted changes")
        return
    path = common.write_result("data_scale", {
        "setup": {"sizes": sizes, "repeats": args.repeats, "cpus": cpus, "tokenizer": "smollm2", "max_length": 512,
                  "packing": True, "global_batch_size": GLOBAL_BATCH, "micro_batch_size": MICRO_BATCH,
                  "examples": "llmft's 3,000 sample ViGGO train rows, replicated",
                  "timed": "see the docstring of scripts/bench/data_scale.py"},
        "results": {str(k): v for k, v in results.items()}, "table": rows, "summary": summary,
        "load_average_at_end": list(os.getloadavg())}, tree=tree)
    print(f"\nsaved {path}")


def measure_size(size: int, tmp: Path, model: Path, tokenizer, cpus: int, repeats: int) -> dict:
    from llmft.data.batching import TokenizedExamples
    from llmft.data.tokenize import tokenizer_threads

    data_file = tmp / f"rows-{size}.jsonl"
    data_prep.write_replicated_rows(size, data_file)
    arms = {"pool": cpus} | ({"one process": 1, ONE_CORE: 1} if size == GOAL_SIZE and cpus > 1 else {})
    cold: dict[str, list[float]] = {arm: [] for arm in arms}
    cache = tmp / f"cache-{size}"
    for repeat in range(repeats):
        for arm, processes in arms.items():
            table = None
            gc.collect()
            with tokenizer_threads(arm != ONE_CORE):
                seconds, table = data_prep.cold_tokenize(model, data_file, cache, tokenizer, processes)
            cold[arm].append(seconds)
            print(f"  cold tokenisation, {arm} ({processes}): {seconds:.1f} s ({size / seconds:,.0f}/s)", flush=True)
    hits = []
    for _ in range(repeats):
        hits.append(data_prep.cache_hit_in_new_process(model, data_file, cache, "call")["seconds"])
        print(f"  cache hit in a new process: {hits[-1]:.2f} s", flush=True)
    arrow_bytes = table.select(["input_ids", "labels", "num_trained"]).nbytes
    tokens = int(sum(table.column("length").to_numpy()))
    examples = TokenizedExamples.from_table(table)
    del table
    gc.collect()
    workers = measure_workers(examples, repeats)
    del examples
    data_file.unlink()
    shutil.rmtree(cache, ignore_errors=True)
    return {"examples": size, "tokens": tokens, "arrow_bytes": arrow_bytes,
            "cold_seconds": {arm: data_prep.samples(v) for arm, v in cold.items()},
            "cache_hit_seconds": data_prep.samples(hits), **workers}


def measure_workers(examples, repeats: int) -> dict:
    """Memory, start-up and plan times of Ray actors that receive `examples` as training workers do."""
    import ray

    # The actors import this directory's modules (read_proc_status) like the driver does.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=int(examples.input_ids.nbytes * 2.5 + 2**30), log_to_driver=False)
    try:
        ref = ray.put(examples)
        one, two = [], []
        for _ in range(repeats):
            one += _run_actors(ref, world_size=1)
            two.append(_run_actors(ref, world_size=2))
            print(f"  1 worker: +{one[-1]['private'] / 2**20:,.0f} MiB private, +{one[-1]['mapped'] / 2**20:,.0f} MiB "
                  f"mapped, start-up {one[-1]['startup_seconds']:.2f} s, plan {one[-1]['plan_seconds'][0]:.2f} s; "
                  f"2 workers: +{sum(w['private'] for w in two[-1]) / 2**20:,.0f} MiB private", flush=True)
    finally:
        ray.shutdown()
    one_share = [w["private"] + w["mapped"] for w in one]
    together = [sum(w["private"] for w in pair) + max(w["mapped"] for w in pair) for pair in two]
    startups = [w["startup_seconds"] for w in one] + [w["startup_seconds"] for pair in two for w in pair]
    plans = [s for w in one for s in w["plan_seconds"]]
    return {
        "worker_one": one, "workers_two": two,
        "worker_data_bytes": data_prep.samples(one_share),
        "two_workers_data_bytes": data_prep.samples(together),
        "two_over_one": data_prep.samples([t / o for t, o in zip(together, one_share)]),
        "startup_seconds": data_prep.samples(startups),
        "plan_epoch_seconds": data_prep.samples(plans),
    }


def _run_actors(ref, world_size: int) -> list[dict]:
    import ray

    actors = [DataWorker.remote() for _ in range(world_size)]
    try:
        ray.get([a.ready.remote() for a in actors])
        return ray.get([a.start.remote([ref], rank, world_size) for rank, a in enumerate(actors)])
    finally:
        for actor in actors:
            ray.kill(actor)


def earlier_sizes_of_this_commit(commit: str) -> dict[int, dict]:
    """Sizes measured by an earlier run at the same commit, so that sizes can be run separately."""
    path = common.BENCH_DIR / "data_scale.json"
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("tree", {}).get("git_commit") != commit:
        return {}
    return {int(size): result for size, result in earlier.get("results", {}).items()}


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _ray_actor(cls):
    import ray

    return ray.remote(num_cpus=1)(cls)


@_ray_actor
class DataWorker:
    """What a training worker does with its data before the first step, measured."""

    def ready(self) -> bool:
        import llmft.data.batching  # noqa: F401 - imports are not data start-up

        return True

    def start(self, refs: list, rank: int, world_size: int) -> dict:
        import numpy as np
        import ray

        from common import read_proc_status
        from llmft.data.batching import collate, plan_epoch, worker_micro_batches

        gc.collect()
        before, store_before = read_proc_status(), _store_resident_bytes()
        start = time.perf_counter()
        data = ray.get(refs[0])
        received = time.perf_counter()
        plan = plan_epoch(data.lengths, epoch=0, seed=0, max_length=512, packing=True, global_batch_size=GLOBAL_BATCH)
        planned = time.perf_counter()
        rows = worker_micro_batches(plan[0], rank=rank, world_size=world_size, micro_batch_size=MICRO_BATCH)[0]
        collate(data, rows, pad_id=0, block_mask=True)
        first_batch = time.perf_counter()
        # An epoch reads every token; so does this, so that every page of the data is resident.
        touched = sum(int(a.sum(dtype=np.int64)) for a in (data.input_ids, data.labels, data.offsets, data.num_trained))
        after, store_after = read_proc_status(), _store_resident_bytes()
        plan_seconds = []
        for epoch in range(1, 4):
            begin = time.perf_counter()
            plan_epoch(data.lengths, epoch=epoch, seed=0, max_length=512, packing=True, global_batch_size=GLOBAL_BATCH)
            plan_seconds.append(time.perf_counter() - begin)
        return {"rank": rank, "pid": os.getpid(), "get_seconds": received - start, "first_plan_seconds": planned - received,
                "startup_seconds": first_batch - start, "plan_seconds": plan_seconds, "steps_per_epoch": len(plan),
                "private": after["RssAnon"] - before["RssAnon"], "mapped": store_after - store_before,
                "file_backed": after["RssFile"] - before["RssFile"],
                "writeable": bool(data.input_ids.flags.writeable), "touched": touched}


def _store_resident_bytes() -> int:
    """Resident bytes of this process's mappings of Ray's object store (/dev/shm/plasma*)."""
    total, in_store = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if len(fields) >= 5 and "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's first line
                in_store = len(fields) >= 6 and "plasma" in fields[5]
            elif in_store and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


def table_rows(results: dict, cpus: int) -> tuple[list[list[str]], list[dict]]:
    rows, summary = [], []
    for size, r in results.items():
        if "skipped" in r:
            rows.append([f"{size:,}", f"skipped ({r['skipped']})"] + [""] * 8)
            continue
        pool = r["cold_seconds"]["pool"]["median"]
        one = r["cold_seconds"].get("one process", {}).get("median")
        memory = r["worker_data_bytes"]["median"]
        rows.append([
            f"{size:,}", f"{pool:.1f} s", f"{size / pool:,.0f}", f"{one / pool:.2f}x" if one else "",
            f"{r['cache_hit_seconds']['median']:.2f} s", f"{memory / 2**20:,.0f} MiB",
            f"{memory / r['arrow_bytes']:.2f}x", f"{r['two_over_one']['median']:.2f}x",
            f"{r['startup_seconds']['median']:.2f} s", f"{r['plan_epoch_seconds']['median']:.2f} s"])
        if size != GOAL_SIZE:
            continue
        summary += [
            common.summary_row("per-worker data memory / Arrow bytes, 1M examples", f"{memory / r['arrow_bytes']:.2f}x",
                               f"<= {MEMORY_GOAL}x", memory / r["arrow_bytes"] <= MEMORY_GOAL),
            common.summary_row("2 workers on one node / 1 worker, data memory, 1M examples",
                               f"{r['two_over_one']['median']:.2f}x", f"< {SHARING_GOAL}x",
                               r["two_over_one"]["median"] < SHARING_GOAL),
            common.summary_row("worker data start-up (object reference to first micro-batch), 1M examples",
                               f"{r['startup_seconds']['median']:.2f} s", f"<= {STARTUP_GOAL_SECONDS:g} s",
                               r["startup_seconds"]["median"] <= STARTUP_GOAL_SECONDS),
            common.summary_row("plan_epoch, 1M examples", f"{r['plan_epoch_seconds']['median']:.2f} s",
                               f"<= {PLAN_GOAL_SECONDS:g} s", r["plan_epoch_seconds"]["median"] <= PLAN_GOAL_SECONDS),
        ]
        if one:
            summary.append(common.summary_row(f"cold tokenisation, pool of {cpus} / 1 process, 1M examples",
                                              f"{one / pool:.2f}x", f">= {POOL_GOAL}x", one / pool >= POOL_GOAL))
        one_core = r["cold_seconds"].get(ONE_CORE, {}).get("median")
        if one_core:
            summary.append(common.summary_row(
                f"cold tokenisation, pool of {cpus} / 1 process with the tokenizer's threads off, 1M examples",
                f"{one_core / pool:.2f}x"))
    return rows, summary


if __name__ == "__main__":
    main()
