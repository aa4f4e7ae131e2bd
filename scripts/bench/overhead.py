"""Framework overhead: llmft (ZeRO-2 and ZeRO-3) against a bare PyTorch loop, at 1 and 2 workers.

    python scripts/bench/overhead.py [--samples 3] [--steps 12]

The same small Llama (4 layers, hidden 256, 2k vocabulary), the same ViGGO sample data, the same
packed batches (8 rows of up to 128 tokens per optimizer step), loss (`forward_loss`), AdamW,
schedule and clipping, one torch thread per process:
- 1 process: a bare loop in this process (llmft's batching and loss + torch, nothing else) against
  `llmft train` with 1 Ray worker under ZeRO-2 and ZeRO-3;
- 2 processes on the 2 cores: a bare 2-process DDP loop (torchrun, gloo) against `llmft train`
  with 2 Ray workers under ZeRO-2 and ZeRO-3 (each rank trains 4 of the 8 rows).
Time per trained token comes from per-step times (llmft's metrics.jsonl `step_time`); the first
2 steps are warm-up and left out, so start-up is not in it. The bare arms run with the malloc
settings llmft gives its CPU workers (`llmft.train.allocator`), so allocation is alike. Overhead = median llmft time per
trained token / median bare time per trained token. Goal: <= 1.10x for ZeRO-2 and ZeRO-3.
The losses of the bare loop and of llmft should agree step by step: the largest difference is
reported.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

GOAL = 1.10
WARMUP_STEPS = 2


def work(model: Path, steps: int) -> list[str]:
    """The training both sides do, as overrides of the tiny config (also used by commits.py)."""
    return [f"model.name_or_path={model}", "data.valid=null", "data.max_length=128", "data.packing=true",
            "training.micro_batch_size=4", "training.global_batch_size=8", f"training.max_steps={steps}",
            "training.eval_every_steps=null", "training.checkpoint_every_steps=null",
            "training.generation_eval_every_steps=null", "scaling.cpus_per_worker=1",
            "model.gradient_checkpointing=false"]


def main() -> None:
    parser = common.arguments(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    tree = common.check_tree(args)
    common.with_worker_malloc()  # the bare arms allocate as llmft's workers do

    from llmft.config import load_config

    overrides = work(common.small_llama(), args.steps)
    arms = {}
    for workers in args.workers:
        if workers == 1:
            cfg = load_config(common.TINY_CONFIG, [*overrides, "scaling.num_workers=1"])
            arms["bare, 1 process"] = lambda cfg=cfg: common.bare_train(cfg, steps=args.steps, threads=1)
        else:
            arms[f"bare DDP, {workers} processes"] = lambda w=workers: common.bare_ddp(
                common.TINY_CONFIG, [*overrides, f"scaling.num_workers={w}"], steps=args.steps, world_size=w, threads=1)
        for stage in args.stages:
            arms[f"llmft ZeRO-{stage}, {workers} worker(s)"] = lambda s=stage, w=workers: common.train_with_llmft(
                common.TINY_CONFIG, [*overrides, f"deepspeed.zero_stage={s}", f"scaling.num_workers={w}"],
                label=f"overhead-z{s}-{w}w").train_records
    samples = common.interleaved(arms, args.samples)

    figures, rows, summary = {}, [], []
    for name, runs in samples.items():
        per_token = [common.step_figures(records, skip_first=WARMUP_STEPS)["seconds_per_trained_token"]
                     for records in runs]
        figures[name] = {"seconds_per_trained_token": common.spread(per_token),
                         "losses": [[r["train_loss"] for r in records] for records in runs]}
    for workers in args.workers:
        bare_name = "bare, 1 process" if workers == 1 else f"bare DDP, {workers} processes"
        bare = figures[bare_name]
        rows.append([bare_name, f"{bare['seconds_per_trained_token']['median'] * 1e3:.3f}", "1.00", "-"])
        for stage in args.stages:
            name = f"llmft ZeRO-{stage}, {workers} worker(s)"
            arm = figures[name]
            overhead = common.ratio_of_medians(arm["seconds_per_trained_token"], bare["seconds_per_trained_token"])
            spread = {key: arm["seconds_per_trained_token"][key] / bare["seconds_per_trained_token"]["median"]
                      for key in ("min", "max")}
            loss_diff = max(abs(a - b) for a, b in zip(arm["losses"][0], bare["losses"][0]))
            arm.update(overhead_vs_bare=overhead, max_abs_loss_diff_vs_bare=loss_diff)
            rows.append([name, f"{arm['seconds_per_trained_token']['median'] * 1e3:.3f}", f"{overhead:.2f}",
                         f"{loss_diff:.1e}"])
            against = "a bare PyTorch loop" if workers == 1 else f"a bare {workers}-process DDP loop"
            summary.append(common.summary_row(
                f"llmft ZeRO-{stage}, {workers} worker(s) / {against}, time per trained token (small Llama, "
                f"{args.steps - WARMUP_STEPS} steps after {WARMUP_STEPS} warm-up)",
                f"{overhead:.2f}x (arm min-max over bare median: {spread['min']:.2f}-{spread['max']:.2f}; "
                f"max loss diff {loss_diff:.0e})", f"<= {GOAL:.2f}x", overhead <= GOAL))
    print()
    common.print_table(["arm", "median ms / trained token", "vs bare", "max |loss diff|"], rows)
    path = common.write_result("overhead", {
        "setup": {"model": "small Llama (4 layers, hidden 256, vocab 2048)", "data": "sample:viggo@train",
                  "steps": args.steps, "warmup_steps_excluded": WARMUP_STEPS, "threads_per_process": 1,
                  "batch": "8 packed rows of <= 128 tokens per step, micro-batches of 4"},
        "arms": figures, "summary": summary}, tree=tree)
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
