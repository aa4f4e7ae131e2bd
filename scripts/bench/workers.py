"""SmolLM2-135M under ZeRO-3 on the machine's 2 cores: 2 workers x 1 thread against 1 worker x 2
threads, for throughput, per-worker memory, and `llmft plan`'s estimate against the measurement.

    python scripts/bench/workers.py [--samples 3] [--steps 4]

The demo's config (`configs/viggo/smollm2-cpu.yaml`: packed 256-token rows, global batch 4 rows
with micro-batches of 2, fp32, torch AdamW, no validation), as `llmft train` runs it:
- `1 worker x 2 threads`: one Ray worker with 2 CPUs and 2 torch threads, gradient accumulation 2;
- `2 workers x 1 thread`: two Ray workers with 1 CPU and 1 torch thread each.
Throughput is trained tokens per second over the steps after the first (warm-up). Memory is
measured from outside, every 0.25 s, for each Ray Train worker process: VmHWM (the kernel's peak
of resident memory) and the largest RssAnon seen (anonymous memory: without mapped files and
Ray's shared object store). Rank 0's `startup_memory_gib` record splits its memory by phase:
after imports (runtime), data, model load (the weights' partition), DeepSpeed initialise (fp32
master partition, gradient partition, buffers), the first step (optimizer states created at the
first step, plus what the allocator keeps) and the first step's peak (activations, logits,
gathered parameters, buckets on top). `llmft plan` for the same config gives the model-state
estimate per worker, compared with the measured model states (model load + DeepSpeed initialise
+ the first step's persistent growth).
Goals: 2 workers x 1 thread / 1 worker x 2 threads >= 1.0x (trained tokens/s); per-worker peak at
2 workers <= 0.6x of 1 worker; the planner's model states within 25% of the measurement.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SPEED_GOAL = 1.0
MEMORY_GOAL = 0.6
PLAN_TOLERANCE = 0.25
ARMS = {"1 worker x 2 threads": ["scaling.num_workers=1", "scaling.cpus_per_worker=2"],
        "2 workers x 1 thread": ["scaling.num_workers=2", "scaling.cpus_per_worker=1"]}


def main() -> None:
    parser = common.arguments(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    tree = common.check_tree(args)
    model = common.smollm2()
    base = [f"model.name_or_path={model}", "data.valid=null", f"training.max_steps={args.steps}",
            "deepspeed.zero_stage=3"]
    runs = common.interleaved({name: (lambda extra=extra, name=name: common.train_with_llmft(
        common.SMOLLM2_CONFIG, [*base, *extra], label="workers-" + name.split()[0] + "w" + name.split()[-2]))
        for name, extra in ARMS.items()}, args.samples)

    arms = {}
    for name, samples in runs.items():
        for run in samples:
            if len(run.peak_rss_bytes) != int(name[0]):
                raise RuntimeError(f"{name}: saw {len(run.peak_rss_bytes)} worker processes; log {run.log_path}")
        arms[name] = {
            "trained_tokens_per_second": common.spread(
                [common.step_figures(run.train_records)["trained_tokens_per_second"] for run in samples]),
            "peak_rss_gib_per_worker": common.spread(
                [max(run.peak_rss_bytes.values()) / common.GIB for run in samples]),
            "peak_anon_gib_per_worker": common.spread(
                [max(run.peak_anon_bytes.values()) / common.GIB for run in samples]),
            "rank0_memory_by_phase_gib": [run.startup_memory for run in samples],
            "plan": plan(base + ARMS[name]),
            "losses": [[r["train_loss"] for r in run.train_records] for run in samples],
            "logs": [run.log_path for run in samples],
        }
    one, two = arms["1 worker x 2 threads"], arms["2 workers x 1 thread"]
    speed = common.ratio_of_medians(two["trained_tokens_per_second"], one["trained_tokens_per_second"])
    memory = common.ratio_of_medians(two["peak_rss_gib_per_worker"], one["peak_rss_gib_per_worker"])
    memory_anon = common.ratio_of_medians(two["peak_anon_gib_per_worker"], one["peak_anon_gib_per_worker"])
    summary = [
        common.summary_row("2 workers x 1 thread / 1 worker x 2 threads, trained tokens/s (SmolLM2-135M, ZeRO-3; "
                           f"arms {common.fmt_spread(two['trained_tokens_per_second'], '{:.0f}')} vs "
                           f"{common.fmt_spread(one['trained_tokens_per_second'], '{:.0f}')} tok/s)",
                           f"{speed:.2f}x", f">= {SPEED_GOAL:.1f}x", speed >= SPEED_GOAL),
        common.summary_row("per-worker peak RSS, 2 workers / 1 worker (SmolLM2-135M, ZeRO-3; arms "
                           f"{common.fmt_spread(two['peak_rss_gib_per_worker'], '{:.2f}', ' GiB')} vs "
                           f"{common.fmt_spread(one['peak_rss_gib_per_worker'], '{:.2f}', ' GiB')})",
                           f"{memory:.2f}x (anonymous memory only: {memory_anon:.2f}x)", f"<= {MEMORY_GOAL}x",
                           memory <= MEMORY_GOAL),
    ]
    table = []
    for name, arm in arms.items():
        by_phase = median_phases(arm["rank0_memory_by_phase_gib"])
        measured_states = sum(by_phase.get(k, 0.0) for k in ("model_load", "deepspeed_initialize", "first_step"))
        estimate = arm["plan"]["model_states_gib"]
        error = estimate / measured_states - 1 if measured_states else float("inf")
        arm.update(memory_by_phase_median_gib=by_phase, measured_model_states_gib=measured_states,
                   plan_error=error)
        table.append([name, f"{estimate:.2f}", f"{measured_states:.2f}", f"{error:+.0%}",
                      f"{by_phase.get('after_imports', 0):.2f}", f"{by_phase.get('first_step_peak', 0):.2f}",
                      f"{arm['peak_rss_gib_per_worker']['median']:.2f}"])
        summary.append(common.summary_row(
            f"`llmft plan` model states per worker vs measured (rank 0: model load + DeepSpeed initialise + first "
            f"step's persistent growth), {name}",
            f"{estimate:.2f} vs {measured_states:.2f} GiB ({error:+.0%}); runtime after imports "
            f"{by_phase.get('after_imports', 0):.2f} GiB, first-step peak {by_phase.get('first_step_peak', 0):.2f} GiB",
            f"within {PLAN_TOLERANCE:.0%}", abs(error) <= PLAN_TOLERANCE))
        split = peak_breakdown(by_phase, measured_states, arm["plan"])
        arm["peak_breakdown_gib"] = split
        summary.append(common.summary_row(
            f"rank 0's first-step peak split, {name} (GiB; runtime and model states measured, activations "
            "and DeepSpeed buffers from `llmft plan`, the rest is what neither accounts for)",
            ", ".join(f"{key} {value:.2f}" for key, value in split.items())))
    print()
    common.print_table(["arm", "plan states GiB", "measured states GiB", "plan error", "runtime GiB",
                        "first-step peak GiB", "peak RSS GiB (outside)"], table)
    print(f"  2w/1w throughput {speed:.2f}x, per-worker peak {memory:.2f}x")
    path = common.write_result("workers", {
        "setup": {"model": str(model), "config": "configs/viggo/smollm2-cpu.yaml", "overrides": base,
                  "steps": args.steps, "warmup_steps_excluded": 1, "arms": ARMS,
                  "memory": "outside: /proc/<pid>/status of each RayTrainWorker every 0.25 s; inside: rank 0's "
                            "startup_memory_gib (RssAnon growth per phase, VmHWM at the first step)"},
        "arms": arms, "speedup_2w_over_1w": speed, "peak_ratio_2w_over_1w": memory,
        "peak_anon_ratio_2w_over_1w": memory_anon, "summary": summary}, tree=tree)
    print(f"\nsaved {path}")


def plan(overrides: list[str]) -> dict:
    """`llmft plan`'s per-worker estimate for this config (its model-state items, in GiB)."""
    from llmft.config import load_config
    from llmft.memory import estimate
    from llmft.models.architecture import load_model_config

    cfg = load_config(common.SMOLLM2_CONFIG, overrides)
    report = estimate(load_model_config(cfg.model.name_or_path, False)[0], cfg, gpu_memory_gb=24)
    states = [item for item in report["per_gpu"] if item["name"] in ("weights", "gradients", "optimizer states")
              or item["name"].startswith("fp32 gradients")]
    return {"model_states_gib": sum(item["gb"] for item in states),
            "items_gib": {item["name"]: item["gb"] for item in report["per_gpu"]},
            "activations_gib": report["activations_gb"], "units": report["units"]}


def peak_breakdown(by_phase: dict[str, float], model_states: float, planned: dict) -> dict[str, float]:
    """Rank 0's first-step peak (VmHWM) split into what was measured and what the planner expects.

    Measured: the runtime (anonymous memory after imports: Python, torch, transformers, DeepSpeed
    and the Ray worker) and the model states (growth over model load, DeepSpeed initialise and
    the first step). The first step's transient memory on top is split by `llmft plan`'s terms:
    activations without the loss, the chunked loss (its logits chunk and the projection's
    gradient), DeepSpeed's buffers (ZeRO-3 working set and communication buckets). The rest is
    what neither accounts for: mapped library files (VmHWM counts them), optimizer temporaries
    (torch AdamW's step makes full-size temporaries of each partition) and allocator slack."""
    peak, runtime = by_phase.get("first_step_peak", 0.0), by_phase.get("after_imports", 0.0)
    activations = planned["activations_gib"][planned["activations_gib"]["counted"]]
    loss = planned["activations_gib"]["of_which_loss"]
    buffers = sum(v for k, v in planned["items_gib"].items() if k in ("ZeRO-3 working set", "comm. buckets"))
    split = {"peak": peak, "runtime": runtime, "model states": model_states,
             "activations (plan)": activations - loss, "logits and loss (plan)": loss,
             "DeepSpeed buffers (plan)": buffers}
    split["rest"] = peak - sum(v for k, v in split.items() if k != "peak")
    return {k: round(v, 3) for k, v in split.items()}


def median_phases(records: list[dict | None]) -> dict[str, float]:
    import statistics

    records = [r for r in records if r]
    keys = sorted({k for r in records for k in r})
    return {k: statistics.median(r.get(k, 0.0) for r in records) for k in keys}


if __name__ == "__main__":
    main()
