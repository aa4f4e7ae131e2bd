"""Evaluation throughput through `llmft eval` itself: batched generation against one prompt at a time.

    python scripts/bench/eval_throughput.py [--samples 3] [--examples 32] [--model PATH]

Runs `llmft eval configs/viggo/smollm2-cpu.yaml --limit N` as a user does (embedded Ray, Ray Data
`map_batches` over one model replica per worker, the config's 1 worker x 2 CPUs), once with its
default `--batch-size 16` and once with `--batch-size 1`, interleaved. The figure is examples per
second as `llmft eval` reports it in its results (`generation.examples_per_second`: from the
start of generation on Ray, model replicas' start-up included, to the last answer); the whole
command's wall time is recorded too, and as a breakdown the replica's own decoding time
(`generation.decoding_seconds`) and the rest of the generation time (Ray Data, the replica's
start, the model load), which batching does not change. Both modes must give the same answers (greedy decoding).
The model is a fine-tune of the demo when one exists under outputs/demo/runs, else
SmolLM2-135M-Instruct with 3 solved examples in each prompt (a few-shot baseline).
Goal: batched >= 4x one at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

GOAL = 4.0


def main() -> None:
    parser = common.arguments(__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    tree = common.check_tree(args)
    model, few_shot = resolve_model(args.model)

    def run(batch_size: int) -> dict:
        out = common.WORK_DIR / f"eval-b{batch_size}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        command = [sys.executable, "-m", "llmft.cli", "eval", str(common.SMOLLM2_CONFIG), "--model", str(model),
                   "--limit", str(args.examples), "--few-shot", str(few_shot), "--batch-size", str(batch_size),
                   "--out", str(out)]
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        env.pop("RAY_ADDRESS", None)
        common.WORK_DIR.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        done = subprocess.run(command, cwd=common.REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"llmft eval failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        results = json.loads(out.read_text())
        predictions = [json.loads(line)["prediction"]
                       for line in out.with_suffix(".predictions.jsonl").read_text().splitlines()]
        return {"examples_per_second": results["generation"]["examples_per_second"],
                "replicas": results["generation"]["workers"],
                "generation_seconds": results["generation"]["seconds"],
                "decoding_seconds": results["generation"]["decoding_seconds"],
                "decoding_examples_per_second": results["generation"]["decoding_examples_per_second"],
                "wall_seconds": wall,
                "predictions": predictions, "results": str(out)}

    samples = common.interleaved({f"batch {args.batch_size}": lambda: run(args.batch_size),
                                  "one at a time (batch 1)": lambda: run(1)}, args.samples)
    batched, single = samples[f"batch {args.batch_size}"], samples["one at a time (batch 1)"]
    figures = {name: {key: common.spread([s[key] for s in runs])
                      for key in ("examples_per_second", "generation_seconds", "decoding_seconds",
                                  "decoding_examples_per_second", "wall_seconds")}
               for name, runs in samples.items()}
    speedup = common.ratio_of_medians(figures[f"batch {args.batch_size}"]["examples_per_second"],
                                      figures["one at a time (batch 1)"]["examples_per_second"])
    wall = common.ratio_of_medians(figures["one at a time (batch 1)"]["wall_seconds"],
                                   figures[f"batch {args.batch_size}"]["wall_seconds"])
    decoding = common.ratio_of_medians(figures[f"batch {args.batch_size}"]["decoding_examples_per_second"],
                                       figures["one at a time (batch 1)"]["decoding_examples_per_second"])
    outside = {name: common.spread([s["generation_seconds"] - s["decoding_seconds"] for s in runs])
               for name, runs in samples.items()}
    same = sum(a == b for a, b in zip(batched[0]["predictions"], single[0]["predictions"])) / args.examples
    common.print_table(["mode", "examples/s", "whole command s"],
                       [[name, common.fmt_spread(f["examples_per_second"]), common.fmt_spread(f["wall_seconds"], "{:.0f}")]
                        for name, f in figures.items()])
    summary = [
        common.summary_row(f"`llmft eval` batched ({args.batch_size}) / one at a time, examples/s ({model_label(model)}, "
                           f"{few_shot}-shot, {args.examples} ViGGO test prompts, "
                           f"{batched[0]['replicas']} Ray Data replica(s))",
                           f"{speedup:.1f}x (whole command: {wall:.1f}x)", f">= {GOAL:.0f}x", speedup >= GOAL),
        common.summary_row("breakdown: decoding alone, batched / one at a time, examples/s (the replica's own "
                           "generate calls; generation time outside them, in Ray Data, the replica's start "
                           "and model load: " + ", ".join(f"{name} {common.fmt_spread(o, '{:.1f}')} s"
                                                          for name, o in outside.items()) + ")",
                           f"{decoding:.1f}x"),
        common.summary_row("batched answers identical to one-at-a-time answers", f"{same:.0%}"),
    ]
    path = common.write_result("eval_throughput", {
        "setup": {"model": str(model), "few_shot": few_shot, "examples": args.examples, "data": "sample:viggo@test",
                  "command": "llmft eval configs/viggo/smollm2-cpu.yaml --model M --limit N --batch-size B",
                  "warmup": "none: every run is a fresh command, as a user runs it"},
        "arms": figures, "speedup": speedup, "wall_speedup": wall, "decoding_speedup": decoding,
        "seconds_outside_decoding": outside, "identical_answers": same,
        "summary": summary}, tree=tree)
    print(f"\nsaved {path}")


def model_label(model: Path) -> str:
    """How the results name the model: an llmft export (the demo's fine-tune) or the base model."""
    if model.name != "model":
        return "SmolLM2-135M base model"
    shown = model.relative_to(common.REPO) if model.is_relative_to(common.REPO) else model
    return f"fine-tuned SmolLM2-135M ({shown})"


def resolve_model(model: str | None) -> tuple[Path, int]:
    """The model to time and how many solved examples its prompts carry."""
    if model:
        path = Path(model)
        return path, 0 if path.name == "model" else 3
    exports = sorted((common.REPO / "outputs" / "demo" / "runs").glob("*/model/config.json"),
                     key=lambda p: p.stat().st_mtime)
    if exports:
        return exports[-1].parent, 0
    return common.smollm2(), 3


if __name__ == "__main__":
    main()
