"""Evaluation throughput: batched greedy generation against one example at a time.

    python scripts/bench/eval_throughput.py [--model PATH] [--examples 32] [--batch-sizes 8 16] [--threads 2]

Uses `llmft.eval.generate.Replica` (the model replica `llmft eval` runs on each Ray worker)
directly, in this process, on the first `--examples` prompts of the ViGGO sample test split:
with all prompts in batches of each of `--batch-sizes` (left-padded, KV cache; `llmft eval`
uses 8), and one prompt per call. The model defaults to the latest fine-tuned export of the demo (outputs/demo/runs/*/model),
which has the task's stop token and so answers like `llmft eval` of a fine-tune; without one it
is SmolLM2-135M-Instruct with 3 solved examples in each prompt (a few-shot baseline). Both modes
must give the same answers (greedy); the share of identical answers is reported.
Goal: batched at least 4x the examples/s of one at a time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

GOAL = 4.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Model folder (default: the demo's latest fine-tune).")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    started_load = common.machine_info()["load_average"]

    from llmft.config import load_config
    from llmft.eval.generate import Replica
    from llmft.eval.prompts import generation_inputs
    from llmft.eval.run import eval_config
    from llmft.models.tokenizer import load_tokenizer
    from llmft.tasks import get_task

    model_path, few_shot = resolve_model(args.model)
    cfg = load_config(common.SMOLLM2_CONFIG, [f"model.name_or_path={model_path}"])
    task = get_task("viggo")
    tokenizer = load_tokenizer(cfg)
    # The prompts, references and generation length `llmft eval` would use.
    inputs = generation_inputs(cfg, tokenizer, "test", limit=args.examples, few_shot=few_shot)
    examples, prompts, max_new_tokens = inputs.examples, inputs.prompts, inputs.max_new_tokens
    generator = Replica(eval_config(cfg), stop_token=task.stop_token, max_new_tokens=max_new_tokens,
                        num_threads=args.threads)
    print(f"model {model_path} ({few_shot}-shot prompts), {len(prompts)} prompts, max_new_tokens {max_new_tokens}, "
          f"{args.threads} threads", flush=True)

    generator.generate(prompts[:2])  # warm-up: first-call allocations and kernel selection
    batched_seconds, batched = {}, {}
    for size in args.batch_sizes:
        start = time.perf_counter()
        answers = []
        for i in range(0, len(prompts), size):
            answers += [a.text for a in generator.generate(prompts[i:i + size])]
        batched_seconds[size], batched[size] = time.perf_counter() - start, answers
        print(f"batched (batch {size}): {batched_seconds[size]:.1f} s", flush=True)
    start = time.perf_counter()
    single = [generator.generate([prompt])[0].text for prompt in prompts]
    single_seconds = time.perf_counter() - start
    print(f"one at a time: {single_seconds:.1f} s", flush=True)

    new_tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 for text in single)
    exact = sum(p.strip() == ex.reference.strip() for p, ex in zip(single, examples)) / len(prompts)
    speedups = {size: single_seconds / seconds for size, seconds in batched_seconds.items()}
    same = {size: sum(a == b for a, b in zip(batched[size], single)) / len(prompts) for size in batched}
    rows = [[f"batched ({size})", f"{seconds:.1f}", f"{len(prompts) / seconds:.2f}", f"{new_tokens / seconds:.0f}",
             f"{speedups[size]:.2f}x", f"{same[size]:.0%}"] for size, seconds in batched_seconds.items()]
    rows.append(["one at a time", f"{single_seconds:.1f}", f"{len(prompts) / single_seconds:.2f}",
                 f"{new_tokens / single_seconds:.0f}", "1.00x", "-"])
    print()
    common.print_table(["mode", "seconds", "examples/s", "answer tokens/s", "speed-up", "same answers"], rows)
    summary = [common.summary_row(f"batched ({size}) / one at a time, examples/s (Replica, {args.threads} threads)",
                                  f"{speedups[size]:.1f}x", f">= {GOAL}x", speedups[size] >= GOAL)
               for size in args.batch_sizes]
    summary.append(common.summary_row("batched answers identical to one-at-a-time answers",
                                      ", ".join(f"{same[size]:.0%} (batch {size})" for size in args.batch_sizes)))
    path = common.write_result("eval_throughput", {
        "setup": {"model": str(model_path), "few_shot": few_shot, "examples": len(prompts),
                  "batch_sizes": args.batch_sizes, "threads": args.threads, "max_new_tokens": max_new_tokens,
                  "answer_tokens": new_tokens, "data": "sample:viggo@test"},
        "batched_seconds": batched_seconds, "single_seconds": single_seconds, "speedup": speedups,
        "identical_answers": same, "exact_match_one_at_a_time": exact, "summary": summary}, started_load=started_load)
    print(f"\nsaved {path}")


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
