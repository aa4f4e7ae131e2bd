"""llmft against TRL's SFTTrainer on the same work: trained tokens/s at equal validation loss,
wall time from command to trained model, and peak memory.

    pip install -e '.[bench]'      # TRL, only for this benchmark
    python scripts/bench/trl_vs_llmft.py [--samples 3] [--steps 20] [--llmft-workers 1] [--llmft-stage 0]

Both sides, as their users would run them on this machine's 2 cores:
- the same model (SmolLM2-135M-Instruct, fp32), the same prompt/completion data (llmft's ViGGO
  sample rows written as `{"prompt","completion"}` JSONL; EOS after each completion on both
  sides), loss on completion tokens only;
- the same max length (256), global batch (4 packed sequences, in micro-batches of 2 with 2
  accumulation steps), learning rate (4e-4, linear decay after 3 warm-up steps), AdamW (betas
  0.9/0.999, eps 1e-8, no weight decay), gradient clipping at 1.0, seed, optimizer steps and 2
  threads in all;
- packing in each one's best non-contaminating mode: TRL's best-fit-decreasing packing, which
  turns on its padding-free batches (examples concatenated, positions restarting per example, no
  attention mask); llmft's default packing (best-fit decreasing, block-diagonal mask).
TRL runs as a user runs it on one machine: one Python process with 2 torch threads
(`SFTTrainer(...).train()`, then `save_model`). llmft runs `llmft train` as its CPU demo config
does on 2 cores: 1 Ray worker x 2 threads at ZeRO stage 0 (one worker has nothing to shard), then
exports the model, as the command does; `--llmft-workers 2 --llmft-stage 3` times the sharded path.
llmft's worker runs with the malloc settings llmft gives CPU workers (`llmft.train.allocator`);
TRL with glibc's defaults, as its users run it.
Trained tokens/s: tokens whose next-token loss is trained, over the steps after the first
(warm-up), from per-step times (llmft's metrics.jsonl; a TRL callback at each step's end).
Validation loss: both trained models scored by one evaluator in this process (plain transformers
forward, full-logits cross-entropy over completion tokens of the first 100 validation examples).
Goal: llmft >= 1.3x TRL's trained tokens/s, with a validation loss no worse than TRL's (equal
within noise: at most 2% above it).
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

GOAL = 1.3
LOSS_TOLERANCE = 0.02
MAX_LENGTH, GLOBAL_BATCH, MICRO_BATCH, LR, WARMUP, SEED = 256, 4, 2, 4e-4, 3, 0
VALID_EXAMPLES = 100
DATA_DIR = common.WORK_DIR / "trl-data"


def main() -> None:
    parser = common.arguments(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--llmft-workers", type=int, choices=(1, 2), default=1)
    parser.add_argument("--llmft-stage", type=int, default=0)
    args = parser.parse_args()
    tree = common.check_tree(args)
    model = common.smollm2()
    train_file, valid_file = write_data()

    def llmft_arm() -> dict:
        run = common.train_with_llmft(common.SMOLLM2_CONFIG, [
            f"model.name_or_path={model}", "data.task=prompt_completion", f"data.train={train_file}",
            "data.valid=null", "data.test=null", f"data.max_length={MAX_LENGTH}", "data.packing=true",
            f"training.micro_batch_size={MICRO_BATCH}", f"training.global_batch_size={GLOBAL_BATCH}", f"training.learning_rate={LR}",
            "training.lr_schedule=linear", f"training.warmup_steps={WARMUP}", "training.weight_decay=0.0",
            "training.max_grad_norm=1.0", f"training.seed={SEED}", f"training.max_steps={args.steps}",
            f"deepspeed.zero_stage={args.llmft_stage}", f"scaling.num_workers={args.llmft_workers}",
            f"scaling.cpus_per_worker={2 // args.llmft_workers}"],
            label="trl-llmft", export=True)
        figures = common.step_figures(run.train_records)
        model_dir = Path(run.log_path).with_suffix("") / "model"
        return {"trained_tokens_per_second": figures["trained_tokens_per_second"], "wall_seconds": run.wall_seconds,
                "peak_rss_gib_per_process": max(run.peak_rss_bytes.values()) / common.GIB,
                "peak_rss_gib_total": sum(run.peak_rss_bytes.values()) / common.GIB,
                "valid_loss": validation_loss(model_dir, valid_file), "model": str(model_dir),
                "losses": [r["train_loss"] for r in run.train_records]}

    def trl_arm() -> dict:
        out = common.WORK_DIR / f"trl-{time.strftime('%Y%m%d-%H%M%S')}"
        command = [sys.executable, str(Path(__file__).resolve()), "--trl-run", str(out), str(model), str(train_file),
                   str(args.steps)]
        env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
        started = time.perf_counter()
        done = subprocess.run(command, cwd=common.REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"TRL run failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        report = json.loads((out / "report.json").read_text())
        figures = common.step_figures(report["records"])
        return {"trained_tokens_per_second": figures["trained_tokens_per_second"], "wall_seconds": wall,
                "peak_rss_gib_per_process": report["peak_rss_gib"], "peak_rss_gib_total": report["peak_rss_gib"],
                "valid_loss": validation_loss(out / "model", valid_file), "model": str(out / "model"),
                "losses": [r["train_loss"] for r in report["records"]]}

    samples = common.interleaved({"TRL SFTTrainer": trl_arm, "llmft": llmft_arm}, args.samples)
    keys = ("trained_tokens_per_second", "valid_loss", "wall_seconds", "peak_rss_gib_per_process", "peak_rss_gib_total")
    figures = {name: {key: common.spread([s[key] for s in runs]) for key in keys} for name, runs in samples.items()}
    llmft, trl = figures["llmft"], figures["TRL SFTTrainer"]
    speed = common.ratio_of_medians(llmft["trained_tokens_per_second"], trl["trained_tokens_per_second"])
    loss_ok = llmft["valid_loss"]["median"] <= trl["valid_loss"]["median"] * (1 + LOSS_TOLERANCE)
    wall = common.ratio_of_medians(trl["wall_seconds"], llmft["wall_seconds"])
    common.print_table(["arm", "trained tok/s", "valid loss", "wall s", "peak RSS GiB/process", "total"],
                       [[name, common.fmt_spread(f["trained_tokens_per_second"], "{:.0f}"),
                         common.fmt_spread(f["valid_loss"], "{:.3f}"), common.fmt_spread(f["wall_seconds"], "{:.0f}"),
                         common.fmt_spread(f["peak_rss_gib_per_process"]), common.fmt_spread(f["peak_rss_gib_total"])]
                        for name, f in figures.items()])
    setting = (f"SmolLM2-135M, ViGGO prompt/completion, {args.steps} steps of {GLOBAL_BATCH} packed "
               f"{MAX_LENGTH}-token sequences, fp32, 2 threads; llmft {args.llmft_workers} worker(s) ZeRO-{args.llmft_stage}, "
               "TRL 1 process")
    summary = [
        common.summary_row(f"llmft / TRL SFTTrainer, trained tokens/s ({setting}; "
                           f"{common.fmt_spread(llmft['trained_tokens_per_second'], '{:.0f}')} vs "
                           f"{common.fmt_spread(trl['trained_tokens_per_second'], '{:.0f}')} tok/s)",
                           f"{speed:.2f}x", f">= {GOAL}x", speed >= GOAL),
        common.summary_row("validation loss after training, llmft vs TRL (one evaluator, 100 examples)",
                           f"{common.fmt_spread(llmft['valid_loss'], '{:.3f}')} vs {common.fmt_spread(trl['valid_loss'], '{:.3f}')}",
                           f"llmft no worse than TRL (within {LOSS_TOLERANCE:.0%})", loss_ok),
        common.summary_row("wall time, command to trained model on disk: TRL / llmft",
                           f"{wall:.2f}x ({common.fmt_spread(trl['wall_seconds'], '{:.0f}', ' s')} vs "
                           f"{common.fmt_spread(llmft['wall_seconds'], '{:.0f}', ' s')})"),
        common.summary_row(f"peak RSS: llmft per worker (sum of its {args.llmft_workers} worker(s)) vs TRL's process",
                           f"{common.fmt_spread(llmft['peak_rss_gib_per_process'], '{:.2f}', ' GiB')} "
                           f"({llmft['peak_rss_gib_total']['median']:.2f} GiB) vs "
                           f"{common.fmt_spread(trl['peak_rss_gib_per_process'], '{:.2f}', ' GiB')}"),
    ]
    path = common.write_result("trl_vs_llmft", {
        "setup": {"model": str(model), "train": str(train_file), "valid": str(valid_file), "steps": args.steps,
                  "warmup_steps_excluded": 1, "max_length": MAX_LENGTH, "global_batch": GLOBAL_BATCH,
                  "micro_batch": MICRO_BATCH, "learning_rate": LR, "schedule": f"linear, {WARMUP} warm-up steps",
                  "llmft_workers": args.llmft_workers, "llmft_zero_stage": args.llmft_stage,
                  "trl": "SFTConfig(packing=True, packing_strategy='bfd' -> padding-free), 1 process, 2 threads",
                  "malloc": "llmft's worker: llmft.train.allocator.CPU_WORKER_MALLOC; TRL: glibc defaults",
                  "valid_examples": VALID_EXAMPLES},
        "arms": figures, "samples": samples, "speedup": speed, "summary": summary}, tree=tree)
    print(f"\nsaved {path}")


def write_data() -> tuple[Path, Path]:
    """llmft's ViGGO sample rows as prompt/completion JSONL (train and validation)."""
    from llmft.data.samples import generate_rows

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    files = []
    for split in ("train", "valid"):
        path = DATA_DIR / f"viggo-{split}.jsonl"
        rows = [{"prompt": f"Sentence: {row['target']}\nMeaning representation: ",
                 "completion": row["meaning_representation"]} for row in generate_rows("viggo", split)]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        files.append(path)
    return files[0], files[1]


def validation_loss(model_dir: Path, valid_file: Path) -> float:
    """Mean cross-entropy per completion token (EOS included) of the first validation examples."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    rows = [json.loads(line) for line in valid_file.read_text().splitlines()][:VALID_EXAMPLES]
    with torch.no_grad():
        for row in rows:
            prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
            completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = torch.tensor([prompt + completion])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
            total += float(F.cross_entropy(logits, ids[0, len(prompt):], reduction="sum"))
            count += len(completion)
    return total / count


def trl_run(out: str, model: str, train_file: str, steps: str) -> None:
    """One TRL SFTTrainer run (a subprocess of the benchmark): train, save, report step times."""
    import torch
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(2)
    out_dir = Path(out)
    config = SFTConfig(
        output_dir=str(out_dir / "trainer"), max_length=MAX_LENGTH, packing=True, packing_strategy="bfd",
        completion_only_loss=True, per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=GLOBAL_BATCH // MICRO_BATCH,
        learning_rate=LR, lr_scheduler_type="linear", warmup_steps=WARMUP, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, max_steps=int(steps), seed=SEED, use_cpu=True,
        bf16=False, fp16=False, save_strategy="no", report_to="none", logging_steps=10**6,
        dataloader_num_workers=0, model_init_kwargs={"dtype": "float32"})
    records: list[dict] = []

    class Timed(SFTTrainer):
        trained = 0
        loss_sum = 0.0

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.trained += int((inputs["labels"][..., 1:] != -100).sum())
            loss = super().training_step(model, inputs, num_items_in_batch)
            # Trainer returns each micro-batch's loss already scaled for gradient accumulation
            # (over the whole step's trained tokens), so the step's loss is their sum.
            self.loss_sum += float(loss)
            return loss

    class StepTimes(TrainerCallback):
        last = None
        counted = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            tokens = trainer.trained - self.counted
            records.append({"step": state.global_step, "step_time": now - self.last, "trained_tokens": tokens,
                            "train_loss": trainer.loss_sum})
            trainer.loss_sum, self.counted, self.last = 0.0, trainer.trained, now

    dataset = load_dataset("json", data_files=train_file, split="train")
    trainer = Timed(model=model, args=config, train_dataset=dataset, callbacks=[StepTimes()])
    trainer.train()
    trainer.save_model(str(out_dir / "model"))
    trainer.processing_class.save_pretrained(str(out_dir / "model"))
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 2**20
    (out_dir / "report.json").write_text(json.dumps({"records": records, "peak_rss_gib": peak}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--trl-run":
        trl_run(*sys.argv[2:])
    else:
        main()
