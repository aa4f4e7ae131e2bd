"""The training loop that runs inside every Ray Train worker.

Read `train_loop_per_worker` top to bottom: setup, data, model, resume, loop (with eval and
checkpoints), end. Everything it calls is a plain function in this file or a small module.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Any

import ray
import ray.train
import torch
import torch.distributed as dist

from llmft.config import Config
from llmft.data.batching import Columns, collate, plan_epoch, trained_tokens, worker_micro_batches
from llmft.train.deepspeed import build_deepspeed_config, training_dtype
from llmft.train.logger import MetricsLogger
from llmft.train.stats import TokenStats, mfu, next_token_loss


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    # ------------------------------------------------------------------ setup
    import deepspeed

    from llmft import checkpoint as ckpt
    from llmft.models import load_model, load_task_tokenizer

    cfg = Config.model_validate(loop_config["config"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = torch.device("cuda", context.get_local_rank()) if cfg.scaling.use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    torch.manual_seed(cfg.training.seed)
    # Ray Train has set up torch.distributed; DeepSpeed's comm layer must adopt it before
    # zero.Init (which sizes its partitions by the world size) runs inside from_pretrained.
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    hooks = TestHooks(rank)
    # DeepSpeed calls torch.distributed APIs that torch deprecates, once per collective: hundreds
    # of identical warnings per step would bury the progress lines.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")

    # ------------------------------------------------------------------ data
    # The driver tokenized and cached the data once; Ray's object store ships it to each node.
    train_data = Columns.from_table(ray.get(loop_config["train_ref"]))
    valid_data = Columns.from_table(ray.get(loop_config["valid_ref"])) if loop_config.get("valid_ref") else None
    lengths = train_data.lengths
    generation_inputs = loop_config.get("generation_eval")

    # Every epoch's plan, from the lengths alone: cheap, and the same on every worker.
    plans = [plan_epoch(lengths, epoch=e, seed=cfg.training.seed, max_length=cfg.data.max_length,
                        packing=cfg.data.packing, global_batch_size=cfg.global_batch_size)
             for e in range(cfg.num_epochs)]
    steps_in_all_epochs = sum(len(plan) for plan in plans)
    total_steps = min(cfg.training.max_steps or steps_in_all_epochs, steps_in_all_epochs)

    # ------------------------------------------------------------------ model
    tokenizer = load_task_tokenizer(cfg)
    ds_config = build_deepspeed_config(cfg, hidden_size=loop_config.get("hidden_size"))
    dtype = getattr(torch, training_dtype(cfg))
    model = load_model(cfg, tokenizer, ds_config, dtype)
    num_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3 partitions
    block_mask = cfg.model.attn_implementation != "flash_attention_2"
    optimizer = None if "optimizer" in ds_config else build_optimizer(model, cfg)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        model_parameters=None if optimizer else [p for p in model.parameters() if p.requires_grad],
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_steps)),
        config=ds_config,
    )

    # ------------------------------------------------------------------ resume
    # Read the position from the checkpoint's own contents: after a restart Ray may hand back
    # an older checkpoint than the last one reported (FACTS.md).
    checkpoint = ckpt.newest(ray.train.get_checkpoint(), loop_config.get("resume_path"))
    start = ckpt.restore(engine, checkpoint, cfg, world_size=world_size, rank=rank)
    global_step, epoch, skip = start.global_step, start.epoch, start.step_in_epoch
    logger = MetricsLogger(cfg, run_dir=loop_config["run_dir"], enabled=rank == 0, total_steps=total_steps,
                           resumed_at=global_step)

    # ------------------------------------------------------------------ loop
    while global_step < total_steps and epoch < cfg.num_epochs:
        plan = plans[epoch]
        for step_in_epoch in range(skip, len(plan)):
            batch = plan[step_in_epoch]
            step_start = time.perf_counter()
            batch_trained_tokens = trained_tokens(train_data, batch)
            step_stats = TokenStats()
            lr = engine.optimizer.param_groups[0]["lr"]
            micro_batches = worker_micro_batches(batch, rank=rank, world_size=world_size,
                                                 micro_batch_size=cfg.training.micro_batch_size)
            hooks.record_examples(global_step + 1, epoch, micro_batches)
            for rows in micro_batches:
                tensors = {k: v.to(device) for k, v in collate(train_data, rows, pad_id=tokenizer.pad_token_id,
                                                                block_mask=block_mask).items()}
                logits = engine(input_ids=tensors["input_ids"], attention_mask=tensors.get("attention_mask"),
                                position_ids=tensors["position_ids"], use_cache=False).logits
                loss_sum, stats = next_token_loss(logits, tensors["labels"], tensors["segment_ids"])
                # DeepSpeed averages gradients over workers; multiplying by world_size and dividing
                # by the global batch's trained tokens makes the update the per-token mean of the
                # whole global batch, across accumulation steps and workers.
                engine.backward(loss_sum * world_size / max(batch_trained_tokens, 1), scale_wrt_gas=False)
                engine.step()  # steps optimizer and scheduler only at the accumulation boundary
                step_stats.add(stats)
                hooks.maybe_crash(global_step + 1)
            global_step += 1
            step_stats = all_reduce(step_stats, device)
            step_time = time.perf_counter() - step_start
            if global_step % cfg.logging.log_every_steps == 0 or global_step == total_steps:
                metrics = step_stats.metrics("train")
                metrics.update(lr=lr, grad_norm=grad_norm(engine), epoch=epoch + (step_in_epoch + 1) / len(plan),
                               trained_tokens_per_second=step_stats.trained_tokens / step_time,
                               tokens_per_second=step_stats.tokens / step_time, step_time=step_time)
                if device.type == "cuda":
                    metrics["mfu"] = mfu(num_params, step_stats.tokens / step_time / world_size,
                                         torch.cuda.get_device_name(device))
                logger.log(global_step, metrics)

            # -------------------------------------------------------------- eval and checkpoint
            epoch_end = step_in_epoch + 1 == len(plan)
            last = global_step == total_steps
            due_eval = epoch_end or last or every(cfg.training.eval_every_steps, global_step)
            due_ckpt = epoch_end or last or every(cfg.training.checkpoint_every_steps, global_step)
            due_generation = bool(generation_inputs) and every(cfg.training.generation_eval_every_steps, global_step)
            if due_eval or due_ckpt or due_generation:
                metrics = {"step": global_step, "epoch": epoch}
                if valid_data is not None and (due_eval or due_ckpt):
                    metrics.update(evaluate(engine, valid_data, cfg, rank, world_size, device,
                                            pad_id=tokenizer.pad_token_id, block_mask=block_mask))
                if due_generation:
                    metrics.update(generation_eval(engine, tokenizer, cfg, generation_inputs, rank, world_size, device))
                if len(metrics) > 2:  # more than step and epoch
                    logger.log(global_step, metrics)
                position = ckpt.Position(global_step=global_step, epoch=epoch + epoch_end,
                                         step_in_epoch=0 if epoch_end else step_in_epoch + 1)
                if due_ckpt:
                    ckpt.save_and_report(engine, tokenizer, cfg, position, metrics, rank=rank, world_size=world_size)
                else:
                    ray.train.report(metrics)
            if last:
                break
        epoch, skip = epoch + 1, 0

    # ------------------------------------------------------------------ end
    hooks.record_final_logits(engine, valid_data or train_data, device)
    logger.close()


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and norm weights (the usual convention)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            shape = getattr(param, "ds_shape", param.shape)  # ZeRO-3 keeps the real shape in ds_shape
            (no_decay if len(shape) < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.training.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.training.learning_rate, betas=cfg.training.adam_betas,
                             eps=cfg.training.adam_eps)


def lr_lambda(cfg: Config, total_steps: int):
    """Learning-rate multiplier per optimizer step: linear warmup, then linear/cosine decay or constant."""
    tr = cfg.training
    warmup = tr.warmup_steps if tr.warmup_steps is not None else math.ceil(tr.warmup_ratio * total_steps)

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if tr.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if tr.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return multiplier


def every(interval: int | None, step: int) -> bool:
    return bool(interval) and step % interval == 0


def all_reduce(stats: TokenStats, device: torch.device) -> TokenStats:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return stats
    values = stats.as_tensor().to(device)
    dist.all_reduce(values)
    return TokenStats.from_tensor(values.cpu())


def grad_norm(engine) -> float | None:
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


@torch.no_grad()
def evaluate(engine, data: Columns, cfg: Config, rank: int, world_size: int, device: torch.device, *,
             pad_id: int, block_mask: bool) -> dict[str, float]:
    """Validation loss, perplexity and accuracies over the whole validation set, split across workers."""
    engine.eval()
    # Every worker must run the same number of forward passes: ZeRO-3 gathers parameters collectively.
    rows = [[i] for i in range(len(data.input_ids))]
    micro = cfg.training.micro_batch_size
    per_pass = world_size * micro
    rows += [[] for _ in range(-len(rows) % per_pass)]
    stats = TokenStats()
    for start in range(0, len(rows), per_pass):
        mine = rows[start + rank * micro:start + (rank + 1) * micro]
        tensors = {k: v.to(device) for k, v in collate(data, mine, pad_id=pad_id, block_mask=block_mask).items()}
        logits = engine(input_ids=tensors["input_ids"], attention_mask=tensors.get("attention_mask"),
                        position_ids=tensors["position_ids"], use_cache=False).logits
        stats.add(next_token_loss(logits, tensors["labels"], tensors["segment_ids"])[1])
    engine.train()
    metrics = all_reduce(stats, device).metrics("valid")
    metrics["valid_perplexity"] = math.exp(min(metrics["valid_loss"], 50.0))
    return metrics


def generation_eval(engine, tokenizer, cfg: Config, inputs: dict[str, Any], rank: int, world_size: int,
                    device: torch.device) -> dict[str, float]:
    """Generate answers for a validation subset and score them with the task's metrics (`valid_gen_*`)."""
    from llmft.eval.generate import generate_sharded
    from llmft.eval.metrics import score
    from llmft.tasks import get_task

    task = get_task(cfg.data.task)
    engine.eval()
    predictions = generate_sharded(engine.module, tokenizer, inputs["prompts"], stop_token=task.stop_token,
                                   max_new_tokens=inputs["max_new_tokens"], batch_size=cfg.training.micro_batch_size,
                                   rank=rank, world_size=world_size, device=device)
    engine.train()
    metrics = score(task.name, predictions, inputs["references"], inputs["contexts"])
    return {f"valid_gen_{key}": value for key, value in metrics.items() if isinstance(value, (int, float))}


class TestHooks:
    """Test-only switches, read from the environment (the workers inherit LLMFT_* variables).

    - `LLMFT_FAULT_KILL_AT_STEP=N`: worker `LLMFT_FAULT_RANK` (default 1) dies during step N,
      once: `LLMFT_FAULT_MARKER` names a file that records the kill, so the restarted worker
      carries on. Exercises Ray's failure recovery and `--resume`.
    - `LLMFT_TRACE_DIR=DIR`: each worker appends the examples of every step to
      `DIR/examples_rank<R>.jsonl`, and rank 0 saves the final model's logits on a fixed input
      to `DIR/final_logits.pt` (to check exactly-once data after a restore, and the export).
    """

    def __init__(self, rank: int):
        self.rank = rank
        step = os.environ.get("LLMFT_FAULT_KILL_AT_STEP")
        self.kill_step = int(step) if step else None
        self.marker = os.environ.get("LLMFT_FAULT_MARKER")
        self.kill_armed = bool(step and self.marker) and rank == int(os.environ.get("LLMFT_FAULT_RANK", "1"))
        self.trace_dir = os.environ.get("LLMFT_TRACE_DIR")

    def maybe_crash(self, step: int) -> None:
        if self.kill_armed and step == self.kill_step and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(step))
            os._exit(1)

    def record_examples(self, step: int, epoch: int, micro_batches) -> None:
        if self.trace_dir:
            examples = [i for rows in micro_batches for row in rows for i in row]
            with open(os.path.join(self.trace_dir, f"examples_rank{self.rank}.jsonl"), "a") as f:
                f.write(json.dumps({"step": step, "epoch": epoch, "examples": examples}) + "\n")

    def record_final_logits(self, engine, data: Columns, device: torch.device) -> None:
        if not self.trace_dir:
            return
        input_ids = torch.tensor([data.input_ids[0]], device=device)
        engine.eval()
        with torch.no_grad():  # every rank runs it: ZeRO-3 gathers parameters collectively
            logits = engine(input_ids=input_ids, use_cache=False).logits
        if self.rank == 0:
            torch.save({"input_ids": input_ids.cpu(), "logits": logits.float().cpu()},
                       os.path.join(self.trace_dir, "final_logits.pt"))
