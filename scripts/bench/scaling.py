"""Scaling from 1 to 2 Ray workers, and the start-up time of `llmft train`.

    python scripts/bench/scaling.py [--steps 5] [--stage 3] [--with-two-threads]

SmolLM2-135M-Instruct on the ViGGO sample (the demo's config: packed 256-token rows, ZeRO-3,
fp32), the same global batch of 4 rows per step, trained with 1 worker (2 micro-batches of 2
rows, gradient accumulation) and with 2 workers (1 micro-batch of 2 rows each), one CPU and one
torch thread per worker. Throughput is trained tokens per second over the steps after the first;
start-up is the time from launching `llmft train` to its first optimizer step (Ray, worker
group, model load under zero.Init, DeepSpeed initialisation). `--with-two-threads` adds 1
worker with 2 threads: on a 2-core machine the alternative to a second worker.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--stage", type=int, default=3)
    parser.add_argument("--with-two-threads", action="store_true")
    args = parser.parse_args()
    started_load = common.machine_info()["load_average"]

    model = common.smollm2()
    base = [f"model.name_or_path={model}", "data.valid=null", f"training.max_steps={args.steps}",
            "training.micro_batch_size=2", "training.global_batch_size=4", f"deepspeed.zero_stage={args.stage}"]
    arms_spec = {"1 worker x 1 thread": ["scaling.num_workers=1", "scaling.cpus_per_worker=1"],
                 "2 workers x 1 thread": ["scaling.num_workers=2", "scaling.cpus_per_worker=1"]}
    if args.with_two_threads:
        arms_spec["1 worker x 2 threads"] = ["scaling.num_workers=1", "scaling.cpus_per_worker=2"]
    arms, rows = {}, []
    for name, extra in arms_spec.items():
        print(name, flush=True)
        run = common.train_with_llmft(common.SMOLLM2_CONFIG, [*base, *extra], label="scaling-" + name.split()[0] + "w"
                                      + name.split()[-2])
        figures = common.step_figures(run.train_records)
        arms[name] = {**figures, "startup_seconds": run.startup_seconds, "wall_seconds": run.wall_seconds,
                      "first_step_after_launch_seconds": run.first_step_seconds,
                      "peak_rss_gib_per_worker": sorted(v / common.GIB for v in run.peak_rss_bytes.values()),
                      "losses": [r["train_loss"] for r in run.train_records]}
    one = arms["1 worker x 1 thread"]["trained_tokens_per_second"]
    for name, figures in arms.items():
        workers = 2 if name.startswith("2") else 1
        figures["speedup_vs_1_worker"] = common.ratio(figures["trained_tokens_per_second"], one)
        figures["scaling_efficiency"] = figures["speedup_vs_1_worker"] / workers
        rows.append([name, f"{figures['trained_tokens_per_second']:.1f}", f"{figures['median_step_seconds']:.1f}",
                     f"{figures['speedup_vs_1_worker']:.2f}x", f"{figures['startup_seconds']:.0f}",
                     ", ".join(f"{g:.2f}" for g in figures["peak_rss_gib_per_worker"])])
    print()
    common.print_table(["arm", "trained tok/s", "s/step", "speed-up", "start-up s", "peak RSS GiB/worker"], rows)
    two = arms["2 workers x 1 thread"]
    summary = [
        common.summary_row(f"2 workers / 1 worker, trained tokens/s (SmolLM2-135M, ZeRO-{args.stage})",
                           f"{two['speedup_vs_1_worker']:.2f}x (efficiency {two['scaling_efficiency']:.0%})"),
        common.summary_row("start-up, `llmft train` to first optimizer step, 1 worker",
                           f"{arms['1 worker x 1 thread']['startup_seconds']:.0f} s"),
        common.summary_row("start-up, `llmft train` to first optimizer step, 2 workers",
                           f"{two['startup_seconds']:.0f} s"),
    ]
    if "1 worker x 2 threads" in arms:
        summary.append(common.summary_row("1 worker x 2 threads / 1 worker x 1 thread, trained tokens/s",
                                          f"{arms['1 worker x 2 threads']['speedup_vs_1_worker']:.2f}x"))
    path = common.write_result("scaling", {
        "setup": {"model": str(model), "config": str(common.SMOLLM2_CONFIG.relative_to(common.REPO)),
                  "steps": args.steps, "warmup_steps_excluded": 1, "zero_stage": args.stage,
                  "global_batch": "4 packed rows of <= 256 tokens"},
        "arms": arms, "summary": summary}, started_load=started_load)
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
