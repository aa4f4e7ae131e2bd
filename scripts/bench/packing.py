"""Trained tokens per second: llmft's packing against padding every example to 512 tokens.

    python scripts/bench/packing.py [--model smollm2|small] [--steps 4] [--threads 2]

One model (SmolLM2-135M by default), the ViGGO sample data and max_length 512, trained in one
process with llmft's own batching, loss and optimizer, in three ways:
- `pad-to-512`: one example per row, every row padded to 512 tokens with a plain padding mask
  (the reference recipe's batching);
- `length-grouped`: one example per row, rows of similar length batched together and padded to
  the longest of the micro-batch (llmft's `data.packing: false`);
- `packed`: several examples per 512-token row with a block-diagonal attention mask (llmft's
  default `data.packing: true`).
Each does `--steps` optimizer steps of 2 rows per micro-batch x 2 micro-batches; the first step
is warm-up and left out. Goal: packing at least 3x the trained tokens/s of padding to 512.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

GOAL = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2", "small"], default="smollm2")
    parser.add_argument("--steps", type=int, default=4, help="Optimizer steps per arm (the first is warm-up).")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    started_load = common.machine_info()["load_average"]

    from llmft.config import load_config

    model = common.smollm2() if args.model == "smollm2" else common.small_llama()
    base = [f"model.name_or_path={model}", "data.valid=null", "data.max_length=512",
            "training.micro_batch_size=2", "training.global_batch_size=4", "scaling.num_workers=1",
            "model.gradient_checkpointing=false", "training.warmup_steps=0"]
    arms_spec = {
        "pad-to-512": (["data.packing=false"], 512),
        "length-grouped": (["data.packing=false"], None),
        "packed": (["data.packing=true"], None),
    }
    arms, rows = {}, []
    for name, (extra, pad_to) in arms_spec.items():
        print(f"{name}: {args.steps} steps", flush=True)
        cfg = load_config(common.TINY_CONFIG, [*base, *extra])
        records = common.bare_train(cfg, steps=args.steps, threads=args.threads, pad_to=pad_to,
                                    on_step=lambda r: print(f"  step {r['step']}: {r['step_time']:.1f} s, "
                                                            f"{r['trained_tokens']} trained tokens", flush=True))
        figures = common.step_figures(records)
        computed = sum(r["padded_tokens"] for r in records[1:])
        arms[name] = {**figures, "computed_positions": computed,
                      "real_token_share": sum(r["tokens"] for r in records[1:]) / max(computed, 1)}
    reference = arms["pad-to-512"]["trained_tokens_per_second"]
    for name, figures in arms.items():
        figures["speedup_vs_pad_to_512"] = common.ratio(figures["trained_tokens_per_second"], reference)
        rows.append([name, f"{figures['trained_tokens_per_second']:,.1f}", f"{figures['median_step_seconds']:.1f}",
                     f"{figures['real_token_share']:.0%}", f"{figures['speedup_vs_pad_to_512']:.2f}x"])
    print()
    common.print_table(["batching", "trained tok/s", "s/step", "real tokens", "vs pad-to-512"], rows)
    packed = arms["packed"]["speedup_vs_pad_to_512"]
    summary = [
        common.summary_row(f"packed / pad-to-512, trained tokens/s ({args.model})", f"{packed:.1f}x",
                           f">= {GOAL}x", packed >= GOAL),
        common.summary_row(f"length-grouped / pad-to-512, trained tokens/s ({args.model})",
                           f"{arms['length-grouped']['speedup_vs_pad_to_512']:.1f}x"),
        common.summary_row(f"packed trained tokens/s ({args.model}, {args.threads} threads)",
                           f"{arms['packed']['trained_tokens_per_second']:,.0f} tok/s"),
    ]
    path = common.write_result("packing", {
        "setup": {"model": args.model, "model_path": str(model), "data": "sample:viggo@train", "max_length": 512,
                  "steps": args.steps, "warmup_steps_excluded": 1, "threads": args.threads,
                  "batch": "2 rows per micro-batch x 2 micro-batches per step, one process (no Ray)"},
        "arms": arms, "summary": summary}, started_load=started_load)
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
