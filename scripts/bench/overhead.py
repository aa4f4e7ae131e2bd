"""Framework overhead: llmft (1 Ray worker; ZeRO-0, 2, 3) against a bare PyTorch loop.

    python scripts/bench/overhead.py [--steps 20] [--threads 1] [--stages 0 2 3]

The same small Llama (4 layers, hidden 256), the same ViGGO sample data, the same packed
batches (8 rows of up to 128 tokens per step), loss, AdamW and schedule go through:
- a bare single-process loop: llmft.data.batching + llmft.train.stats + torch, nothing else;
- `llmft train` with 1 Ray worker under ZeRO-0, 2 and 3 (a subprocess each, as a user runs it).
Time per trained token comes from per-step times (llmft's metrics.jsonl `step_time`), with the
first step left out as warm-up, so start-up is not in it; start-up (launch of `llmft train` to
its first optimizer step) is reported on its own. Goal: llmft within 1.3x of the bare loop.
The losses of the bare loop and of llmft at ZeRO-0 should agree step by step: both are printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

GOAL = 1.3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="Torch threads of the bare loop and of the worker.")
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 2, 3])
    args = parser.parse_args()
    started_load = common.machine_info()["load_average"]

    model = common.small_llama()
    overrides = [f"model.name_or_path={model}", "data.valid=null", "data.max_length=128", "data.packing=true",
                 "training.micro_batch_size=8", "training.global_batch_size=8", f"training.max_steps={args.steps}",
                 "training.eval_every_steps=null", "training.checkpoint_every_steps=null",
                 "training.generation_eval_every_steps=null",
                 "scaling.num_workers=1", f"scaling.cpus_per_worker={args.threads}", "model.gradient_checkpointing=false"]

    from llmft.config import load_config

    print(f"bare PyTorch loop, {args.steps} steps, {args.threads} thread(s)", flush=True)
    cfg = load_config(common.TINY_CONFIG, overrides)
    bare_records = common.bare_train(cfg, steps=args.steps, threads=args.threads)
    bare = common.step_figures(bare_records)

    runs = {}
    for stage in args.stages:
        print(f"llmft train, 1 worker, ZeRO-{stage}", flush=True)
        runs[stage] = common.train_with_llmft(common.TINY_CONFIG, [*overrides, f"deepspeed.zero_stage={stage}"],
                                              label=f"overhead-zero{stage}")

    rows, arms = [], {"bare": {**bare, "losses": [r["train_loss"] for r in bare_records]}}
    rows.append(["bare PyTorch", f"{bare['seconds_per_trained_token'] * 1e3:.3f}", f"{bare['trained_tokens_per_second']:,.0f}",
                 "1.00", "-"])
    summary = []
    for stage, run in runs.items():
        figures = common.step_figures(run.train_records)
        overhead = common.ratio(figures["seconds_per_trained_token"], bare["seconds_per_trained_token"])
        losses = [r["train_loss"] for r in run.train_records]
        max_loss_diff = max(abs(a - b) for a, b in zip(losses, arms["bare"]["losses"]))
        arms[f"llmft_zero{stage}"] = {**figures, "overhead_vs_bare": overhead, "startup_seconds": run.startup_seconds,
                                      "first_step_after_launch_seconds": run.first_step_seconds,
                                      "wall_seconds": run.wall_seconds, "losses": losses,
                                      "max_abs_loss_diff_vs_bare": max_loss_diff}
        rows.append([f"llmft ZeRO-{stage}", f"{figures['seconds_per_trained_token'] * 1e3:.3f}",
                     f"{figures['trained_tokens_per_second']:,.0f}", f"{overhead:.2f}", f"{run.startup_seconds:.0f}"])
        summary.append(common.summary_row(f"llmft ZeRO-{stage} / bare loop, time per trained token (1 worker)",
                                          f"{overhead:.2f}x", f"<= {GOAL}x", overhead <= GOAL))
    for stage, run in runs.items():
        summary.append(common.summary_row(f"start-up, `llmft train` to first optimizer step (ZeRO-{stage})",
                                          f"{run.startup_seconds:.0f} s"))
    if 0 in runs:
        summary.append(common.summary_row("max |train_loss llmft ZeRO-0 - bare| over the steps",
                                          f"{arms['llmft_zero0']['max_abs_loss_diff_vs_bare']:.2e}"))

    print()
    common.print_table(["arm", "ms / trained token", "trained tok/s", "vs bare", "start-up s"], rows)
    path = common.write_result("overhead", {
        "setup": {"model": "small Llama (4 layers, hidden 256, vocab 2048)", "data": "sample:viggo@train",
                  "steps": args.steps, "warmup_steps_excluded": 1, "threads": args.threads,
                  "batch": "8 packed rows of <= 128 tokens per step", "workers": 1},
        "arms": arms, "summary": summary}, started_load=started_load)
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
