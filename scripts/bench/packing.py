"""Packing against length-grouped padding, llmft's two batching modes, on the ViGGO sample.

    python scripts/bench/packing.py [--samples 3]

`llmft train` of SmolLM2-135M with the demo's config and 2 Ray workers of 1 CPU under ZeRO-3 (fp32, global
batch 4 rows in micro-batches of 2) at the recipe's context of 512 tokens, in both of llmft's modes:
- `packed` (`data.packing: true`, the default): several examples per 512-token row, positions
  restarting per example (transformers finds the examples' boundaries from them);
- `length-grouped` (`data.packing: false`): one example per row, rows of similar length batched
  together and padded to the longest of the micro-batch.
The headline is packed / length-grouped trained tokens/s (steps after the first, which is
warm-up). Beside it, labelled for what it is: packed against padding every example to 512
tokens (the reference recipe's batching), measured in a bare loop in this process, since llmft
has no pad-to-512 mode; with ~50-token examples that ratio mostly counts padding that was never
needed. Goal: packed / length-grouped >= 1.5x.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

GOAL = 1.5


def main() -> None:
    parser = common.arguments(__doc__.splitlines()[0])
    parser.add_argument("--packed-steps", type=int, default=3)
    parser.add_argument("--grouped-steps", type=int, default=8)
    args = parser.parse_args()
    tree = common.check_tree(args)
    common.with_worker_malloc()  # the bare arms allocate as llmft's workers do

    from llmft.config import load_config

    model = common.smollm2()
    # Pinned rather than taken from the demo config, which now runs 1 worker at ZeRO stage 0.
    base = [f"model.name_or_path={model}", "data.valid=null", "data.max_length=512", "scaling.num_workers=2",
            "scaling.cpus_per_worker=1", "deepspeed.zero_stage=3"]
    arms = {
        "packed": lambda: common.train_with_llmft(
            common.SMOLLM2_CONFIG, [*base, "data.packing=true", f"training.max_steps={args.packed_steps}"],
            label="packing-packed").train_records,
        "length-grouped": lambda: common.train_with_llmft(
            common.SMOLLM2_CONFIG, [*base, "data.packing=false", f"training.max_steps={args.grouped_steps}"],
            label="packing-grouped").train_records,
        "pad-to-512 (bare loop, 1 process x 2 threads)": lambda: common.bare_train(
            load_config(common.SMOLLM2_CONFIG, [*base, "data.packing=false", "scaling.num_workers=1"]),
            steps=2, threads=2, pad_to=512),
        "packed (bare loop, 1 process x 2 threads)": lambda: common.bare_train(
            load_config(common.SMOLLM2_CONFIG, [*base, "data.packing=true", "scaling.num_workers=1"]),
            steps=2, threads=2),
    }
    samples = common.interleaved(arms, args.samples)
    figures = {name: {"trained_tokens_per_second": common.spread(
        [common.step_figures(records)["trained_tokens_per_second"] for records in runs]),
        "tokens_per_second": common.spread([common.step_figures(records)["tokens_per_second"] for records in runs]),
        "steps_measured": common.step_figures(runs[0])["steps"]} for name, runs in samples.items()}
    headline = common.ratio_of_medians(figures["packed"]["trained_tokens_per_second"],
                                       figures["length-grouped"]["trained_tokens_per_second"])
    padded = common.ratio_of_medians(figures["packed (bare loop, 1 process x 2 threads)"]["trained_tokens_per_second"],
                                     figures["pad-to-512 (bare loop, 1 process x 2 threads)"]["trained_tokens_per_second"])
    rows = [[name, common.fmt_spread(f["trained_tokens_per_second"], "{:.0f}")] for name, f in figures.items()]
    common.print_table(["arm", "trained tokens/s"], rows)
    print(f"  packed / length-grouped {headline:.2f}x; packed / pad-to-512 (bare loop) {padded:.1f}x")
    summary = [
        common.summary_row("packed / length-grouped, trained tokens/s (`llmft train`, SmolLM2-135M, ViGGO sample, "
                           f"512-token context; {common.fmt_spread(figures['packed']['trained_tokens_per_second'], '{:.0f}')}"
                           f" vs {common.fmt_spread(figures['length-grouped']['trained_tokens_per_second'], '{:.0f}')} tok/s)",
                           f"{headline:.2f}x", f">= {GOAL}x", headline >= GOAL),
        common.summary_row("for reference only: packed / every example padded to 512 (the reference recipe's batching; "
                           "bare loop, mostly padding that was never needed)", f"{padded:.1f}x"),
    ]
    path = common.write_result("packing", {
        "setup": {"model": str(model), "config": "configs/viggo/smollm2-cpu.yaml", "overrides": base,
                  "steps": {"packed": args.packed_steps, "length-grouped": args.grouped_steps, "bare": 2},
                  "warmup_steps_excluded": 1},
        "arms": figures, "packed_over_length_grouped": headline, "packed_over_pad_to_512": padded,
        "summary": summary}, tree=tree)
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
