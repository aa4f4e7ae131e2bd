"""Start-up: `llmft train` of the tiny model, launch to the end of the first optimizer step, warm.

    python scripts/bench/startup.py [--samples 3] [--fresh-check]

The tiny model (`llmft models make-tiny`) with `configs/viggo/tiny-cpu.yaml` as shipped: 2 Ray
workers, ZeRO-3, an embedded Ray started by the command. "Warm" means a machine that has run
llmft before: Python's bytecode caches, the OS page cache and DeepSpeed's compiled ops exist;
tokenised data is cached. The total is measured from outside (subprocess launch to the first
`train_loss` record in metrics.jsonl); the breakdown is llmft's own (`startup_seconds`, written by
rank 0 with its first step): the command's imports, data, Ray start, Ray Train's controller and
worker group (with its helper actors), worker set-up, imports, DeepSpeed's communication init,
data shipping, model load, DeepSpeed initialise and the first step.

`--fresh-check` also checks, once, that a fresh machine compiles no op before its first step:
with an empty TORCH_EXTENSIONS_DIR (no op built at install either) it runs `llmft train` and
reports whether the run built anything (new files in that folder, or "Building extension" or
"built successfully" in its log). Goal: <= 20 s warm.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

GOAL_SECONDS = 20.0
OVERRIDES = ["training.max_steps=1", "data.valid=null", "training.generation_eval_every_steps=null",
             "training.checkpoint_every_steps=null"]


def main() -> None:
    parser = common.arguments(__doc__.splitlines()[0])
    parser.add_argument("--fresh-check", action="store_true")
    args = parser.parse_args()
    tree = common.check_tree(args)
    model = common.tiny_llama()
    overrides = [f"model.name_or_path={model}", *OVERRIDES]
    common.train_with_llmft(common.TINY_CONFIG, overrides, label="startup-warmup")  # warms caches; not counted
    runs = common.interleaved({"warm": lambda: common.train_with_llmft(common.TINY_CONFIG, overrides,
                                                                        label="startup")}, args.samples)["warm"]
    totals = common.spread([run.first_step_seconds for run in runs])
    phases = sorted({phase for run in runs for phase in run.startup_breakdown})
    breakdown = {phase: common.spread([run.startup_breakdown.get(phase, 0.0) for run in runs]) for phase in phases}
    rows = [[phase, f"{breakdown[phase]['median']:.2f}", f"{breakdown[phase]['min']:.2f}",
             f"{breakdown[phase]['max']:.2f}"] for phase in phases]
    common.print_table(["phase (llmft's startup_seconds)", "median s", "min", "max"], rows)
    print(f"  launch -> first step done (outside): {common.fmt_spread(totals, '{:.1f}', ' s')}")
    from llmft.train.startup import PHASES

    order = [name for name, _, _ in PHASES]
    parts = ", ".join(f"{name} {breakdown[name]['median']:.1f}" for name in order if name in breakdown)
    summary = [
        common.summary_row("start-up to the first optimizer step, tiny model, warm (`llmft train`, 2 workers, ZeRO-3)",
                           common.fmt_spread(totals, "{:.1f}", " s"), f"<= {GOAL_SECONDS:.0f} s",
                           totals["median"] <= GOAL_SECONDS),
        common.summary_row("start-up breakdown, median s (llmft's `startup_seconds`)", parts),
    ]
    fresh = fresh_machine_check(overrides) if args.fresh_check else None
    if fresh:
        summary.append(common.summary_row(
            "fresh machine: ops compiled or loaded by `llmft train` with an empty op cache (compiled libraries in it, "
            "'Building extension' or 'built successfully' in its log; 1 run)",
            "none" if not fresh["built_during_run"] else "some", "none", not fresh["built_during_run"]))
    path = common.write_result("startup", {
        "setup": {"model": "tiny Llama (make-tiny: 2 layers, hidden 64)", "config": "configs/viggo/tiny-cpu.yaml",
                  "overrides": OVERRIDES, "warmup": "one run before the samples, not counted",
                  "measured": "subprocess launch to the first train_loss record; breakdown from metrics.jsonl"},
        "total_seconds": totals, "breakdown_seconds": breakdown,
        "memory_gib_rank0": [run.startup_memory for run in runs],
        "fresh_machine": fresh, "logs": [run.log_path for run in runs], "summary": summary}, tree=tree)
    print(f"\nsaved {path}")


def fresh_machine_check(overrides: list[str]) -> dict:
    """Empty op cache -> `llmft train`: did the run compile or load any DeepSpeed op?"""
    with tempfile.TemporaryDirectory(prefix="llmft-ops-") as ops:
        run = common.train_with_llmft(common.TINY_CONFIG, overrides, label="startup-fresh",
                                      env={"TORCH_EXTENSIONS_DIR": ops})
        files = sorted(str(p) for p in Path(ops).rglob("*") if p.is_file())
        log = Path(run.log_path).read_text()
        built = bool(files) or "Building extension" in log or "built successfully" in log
        return {"built_during_run": built, "first_step_seconds": run.first_step_seconds, "op_cache_files": files[:20]}


if __name__ == "__main__":
    main()
