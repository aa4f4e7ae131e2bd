"""The training loop that runs inside every Ray Train worker.

Read `train_loop_per_worker` top to bottom: setup, data, model, resume, steps (with validation
and checkpoints), end. The loss is `train.loss.forward_loss`, shared with validation.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch

from llmft.config import Config
from llmft.data.batching import Rows, TokenizedExamples, pack_examples, plan_epoch, trained_tokens, worker_micro_batches
from llmft.eval.prompts import GenerationInputs
from llmft.train.allocator import malloc_settings_here
from llmft.train.deepspeed import (
    ENGINE_FILE,
    build_deepspeed_config,
    describe_engine,
    skip_single_rank_allreduce,
    training_dtype,
)
from llmft.train.hooks import TraceAndFaultHooks
from llmft.train.logger import MetricsLogger
from llmft.train.loss import forward_loss, loss_scale, use_output_projection
from llmft.train.optim import build_optimizer, lr_lambda, parameter_groups
from llmft.train.stats import TokenStats, all_reduce, mfu
from llmft.train import startup


@dataclass
class WorkerInput:
    """Everything a training worker gets from the driver."""

    config: Config
    train_data: ray.ObjectRef                # the training TokenizedExamples (flat arrays), in Ray's object store
    valid_data: ray.ObjectRef | None         # the validation TokenizedExamples, if any
    run_dir: str                             # where rank 0 writes metrics.jsonl
    hidden_size: int | None                  # sizes ZeRO's buckets, when known on the driver
    resume_path: str | None                  # `--resume PATH`: the checkpoint to start from
    generation_eval: GenerationInputs | None  # the validation subset scored by generation
    timeline: dict[str, float]               # the driver's start-up marks (llmft.train.startup)


@dataclass
class Due:
    """What happens after an optimizer step."""

    validation: bool
    checkpoint: bool
    generation: bool

    @property
    def anything(self) -> bool:
        return self.validation or self.checkpoint or self.generation


def due_after_step(cfg: Config, global_step: int, *, epoch_end: bool, last: bool, can_generate: bool) -> Due:
    """Validation and checkpoints every N steps, and always at an epoch's end and the run's end."""
    def every(interval: int | None) -> bool:
        return bool(interval) and global_step % interval == 0

    return Due(validation=epoch_end or last or every(cfg.training.eval_every_steps),
               checkpoint=epoch_end or last or every(cfg.training.checkpoint_every_steps),
               generation=can_generate and every(cfg.training.generation_eval_every_steps))


def join_worker_group(cfg: Config) -> tuple[int, int, torch.device]:
    """This Ray Train worker's rank, the world size and its device, with DeepSpeed's comm layer up.
    Training and the zero3 eval engine start their workers alike."""
    import deepspeed

    context = ray.train.get_context()
    # An elastic run may have fewer workers than it started with: the global batch stays the
    # same and each worker accumulates more.
    rank, world_size = context.get_world_rank(), context.get_world_size()
    # Ray's device for this worker: the GPU Ray assigned it, found in CUDA_VISIBLE_DEVICES (the
    # local rank is not guaranteed to index it). Set before NCCL's first collective.
    device = ray.train.torch.get_device() if cfg.scaling.use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    torch.manual_seed(cfg.training.seed)
    # Ray Train has set up torch.distributed (NCCL on GPUs, gloo on CPUs); DeepSpeed's comm layer
    # must adopt it before zero.Init (which sizes its partitions by the world size) runs inside
    # from_pretrained.
    skip_shared_memory_comm()
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    # DeepSpeed calls torch.distributed APIs that torch deprecates, once per collective: hundreds
    # of identical warnings per step would bury the progress lines.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    return rank, world_size, device


def skip_shared_memory_comm() -> None:
    """Tell DeepSpeed not to build its shared-memory comm op in this process.

    DeepSpeed's comm layer builds that op whenever it starts on a CPU, but uses it only in
    `inference_all_reduce`, the collective of its tensor-parallel (AutoTP) layers. Training's
    collectives (ZeRO's gathers and reductions) go through torch.distributed (gloo on CPUs)
    either way. On a machine that has not built it before, the build (gcc) takes 40-50 s of a
    2-core machine's start-up; a built op still takes about 0.3 s to load per worker.
    `deepspeed.ops.__compatible_ops__` is DeepSpeed's own record of which ops can be used here.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def batch_arguments(pad_id: int, device: torch.device) -> dict:
    """How `forward_loss` collates micro-batches, in training and validation alike.

    Packed examples are told apart by their restarting position_ids alone, with no attention
    mask: transformers then finds the boundaries itself (the KV cache is off) for sdpa, eager and
    flash-attention, and keeps each layer's own attention pattern. A 4D block mask would replace
    that pattern, dropping the sliding windows of Mistral, Gemma-2/3, Phi-3 and Qwen2 layers.
    """
    return {"pad_id": pad_id, "device": device, "block_mask": False}


def train_loop_per_worker(inputs: WorkerInput) -> None:
    # ------------------------------------------------------------------ setup
    # A worker process Ray started before `fit` (a pre-started one) counts from `fit`.
    timeline, memory = {**inputs.timeline}, {}
    timeline["worker_started"] = max(startup.process_started(), timeline.get("fit_called", 0.0))
    startup.mark(timeline, "loop_entered", memory)
    with startup.without_unused_mlflow(inputs.config):
        import deepspeed

    from llmft import checkpoint as ckpt
    from llmft.models.loading import load_model
    from llmft.models.tokenizer import load_task_tokenizer

    cfg = inputs.config
    startup.mark(timeline, "imports_done", memory)
    rank, world_size, device = join_worker_group(cfg)
    hooks = TraceAndFaultHooks(rank, world_size)
    startup.mark(timeline, "distributed_ready", memory)

    # ------------------------------------------------------------------ data
    # The driver tokenized the data once. Ray's object store keeps one copy per node, and ray.get
    # maps its flat arrays into this worker without copying them.
    train_data: TokenizedExamples = ray.get(inputs.train_data)
    valid_data: TokenizedExamples | None = ray.get(inputs.valid_data) if inputs.valid_data else None
    # An epoch's plan comes from the lengths alone, the same on every worker; it is made when the
    # epoch starts. Every epoch has as many steps as the first.
    plan_for = functools.partial(plan_epoch, train_data.lengths, seed=cfg.training.seed, max_length=cfg.data.max_length,
                                 packing=cfg.data.packing, global_batch_size=cfg.global_batch_size)
    plan = plan_for(epoch=0)
    total_steps = min(cfg.training.max_steps or math.inf, cfg.num_epochs * len(plan))
    startup.mark(timeline, "data_ready_in_worker", memory)

    # ------------------------------------------------------------------ model
    tokenizer = load_task_tokenizer(cfg)
    # The checkpoint to start from is chosen before the engine is built: one of another world
    # size loads as a universal checkpoint, which the engine must know. The position is read
    # from the checkpoint's own contents, never from Ray's bookkeeping.
    checkpoint = ckpt.newest(ray.train.get_checkpoint(), inputs.resume_path, inputs.run_dir)
    ds_config = build_deepspeed_config(cfg, hidden_size=inputs.hidden_size, world_size=world_size,
                                       load_universal=ckpt.needs_resharding(checkpoint, world_size))
    model = load_model(cfg, tokenizer, ds_config, getattr(torch, training_dtype(cfg)))
    use_output_projection(model)  # the loss runs in the projection's forward (chunked, ZeRO-3 aware)
    num_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3 partitions
    # One weight-decay rule whichever optimizer steps: DeepSpeed's from its JSON (CPU Adam under
    # offload) gets the same parameter groups as the torch AdamW client optimizer.
    groups = parameter_groups(model, cfg.training.weight_decay)
    startup.mark(timeline, "model_loaded", memory)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=None if "optimizer" in ds_config else build_optimizer(groups, cfg),
        model_parameters=groups,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_steps)),
        config=ds_config,
    )
    skip_single_rank_allreduce(engine)  # one rank: averaging gradients with itself is the identity
    # from_pretrained returns the model in eval mode, and dropout and gradient checkpointing act
    # only in train mode.
    engine.train()
    hooks.watch(engine.module)
    startup.mark(timeline, "engine_ready", memory)
    batch_args = batch_arguments(tokenizer.pad_token_id, device)

    # ------------------------------------------------------------------ resume
    start = ckpt.restore(engine, checkpoint, cfg, world_size=world_size, rank=rank)
    hooks.record_states(engine, "restored", start.global_step)
    global_step, epoch, skip = start.global_step, start.epoch, start.step_in_epoch
    logger = MetricsLogger(cfg, run_dir=inputs.run_dir, enabled=rank == 0, total_steps=total_steps,
                           resumed_at=global_step)
    logger.write_json(ENGINE_FILE, {**describe_engine(engine), "malloc": malloc_settings_here()})
    startup.mark(timeline, "resumed", memory)

    # ------------------------------------------------------------------ steps
    while global_step < total_steps and epoch < cfg.num_epochs:
        if plan.epoch != epoch:
            plan = plan_for(epoch=epoch)
        for step_in_epoch in range(skip, len(plan)):
            step_start = time.perf_counter()
            lr = engine.optimizer.param_groups[0]["lr"]
            batch = plan[step_in_epoch]
            scale = loss_scale(world_size, trained_tokens(train_data, batch))
            micro_batches = worker_micro_batches(batch, rank=rank, world_size=world_size,
                                                 micro_batch_size=cfg.training.micro_batch_size)
            step_stats = TokenStats()
            for micro, rows in enumerate(micro_batches):
                hooks.feeding(global_step + 1, epoch, micro, rows)
                loss_sum, stats = forward_loss(engine, train_data, rows, **batch_args)
                engine.backward(loss_sum * scale, scale_wrt_gas=False)
                engine.step()  # steps optimizer and scheduler only at the accumulation boundary
                step_stats.add(stats)
                hooks.maybe_crash(global_step + 1)
            global_step += 1
            step_stats = all_reduce(step_stats, device)
            step_time = time.perf_counter() - step_start
            if global_step == start.global_step + 1:  # this process's first step
                startup.mark(timeline, "first_step_done", memory)
                logger.log(global_step, {"startup_seconds": startup.phases(timeline),
                                         "startup_memory_gib": startup.memory_phases(memory, startup.resident_gib()["VmHWM"])})
            if global_step % cfg.logging.log_every_steps == 0 or global_step == total_steps:
                metrics = step_stats.metrics("train")
                metrics.update(lr=lr, grad_norm=grad_norm(engine), epoch=epoch + (step_in_epoch + 1) / len(plan),
                               trained_tokens_per_second=step_stats.trained_tokens / step_time,
                               tokens_per_second=step_stats.tokens / step_time, step_time=step_time)
                if device.type == "cuda" and training_dtype(cfg) != "float32":  # peaks are 16-bit peaks
                    metrics["mfu"] = mfu(num_params, step_stats.tokens / step_time / world_size,
                                         torch.cuda.get_device_name(device))
                logger.log(global_step, metrics)

            # -------------------------------------------------------------- validation and checkpoint
            epoch_end = step_in_epoch + 1 == len(plan)
            last = global_step == total_steps
            due = due_after_step(cfg, global_step, epoch_end=epoch_end, last=last,
                                 can_generate=inputs.generation_eval is not None)
            if due.anything:
                results = {}
                if valid_data is not None and (due.validation or due.checkpoint):
                    results.update(evaluate(engine, valid_data, cfg, rank, world_size, batch_args))
                if due.generation:
                    results.update(generation_eval(engine, tokenizer, cfg, inputs.generation_eval, rank, world_size, device))
                if results:
                    logger.log(global_step, {"epoch": epoch, **results})
                metrics = {"step": global_step, "epoch": epoch, **results}
                if due.checkpoint:
                    logger.sync()  # a run in a bucket: its metrics arrive before the checkpoint after them
                    position = ckpt.Position(global_step=global_step, epoch=epoch + epoch_end,
                                             step_in_epoch=0 if epoch_end else step_in_epoch + 1)
                    ckpt.save_and_report(engine, tokenizer, cfg, position, metrics, rank=rank, world_size=world_size,
                                         upload=hooks.checkpoint_upload(global_step))
                    hooks.record_states(engine, "saved", global_step)
                else:
                    ray.train.report(metrics)
            if last:
                break
        epoch, skip = epoch + 1, 0

    # ------------------------------------------------------------------ end
    hooks.record_final_logits(engine, valid_data or train_data, device)
    logger.close()


def grad_norm(engine) -> float | None:
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


@torch.no_grad()
def evaluate(engine, data: TokenizedExamples, cfg: Config, rank: int, world_size: int,
             batch_args: dict) -> dict[str, float]:
    """Validation loss, perplexity and accuracies over the whole validation set, split across workers."""
    engine.eval()
    # Packed like the training data when packing is on (the per-token loss is the same, in fewer passes).
    rows = pack_examples(data.lengths, cfg.data.max_length) if cfg.data.packing else Rows.singles(np.arange(len(data)))
    # Every worker must run the same number of forward passes: ZeRO-3 gathers parameters collectively.
    micro = cfg.training.micro_batch_size
    per_pass = world_size * micro
    rows = rows.with_fillers(-len(rows) % per_pass)
    stats = TokenStats()
    for start in range(0, len(rows), per_pass):
        mine = [rows[r] for r in range(start + rank * micro, start + (rank + 1) * micro)]
        stats.add(forward_loss(engine, data, mine, **batch_args)[1])
    engine.train()
    metrics = all_reduce(stats, batch_args["device"]).metrics("valid")
    metrics["valid_perplexity"] = math.exp(min(metrics["valid_loss"], 50.0))
    return metrics


def generation_eval(engine, tokenizer, cfg: Config, inputs: GenerationInputs, rank: int, world_size: int,
                    device: torch.device) -> dict[str, float]:
    """Generate answers for a validation subset and score them with the task's metrics (`valid_gen_*`)."""
    from llmft.eval.generate import generate_sharded, generation_batches, stopping_for
    from llmft.eval.metrics import score
    from llmft.models.tokenizer import task_stop_token
    from llmft.tasks import get_task

    task = get_task(cfg.data.task)
    engine.eval()
    answers = generate_sharded(
        engine.module, tokenizer, inputs.prompts, generation_batches(inputs.prompts, tokenizer, cfg.training.micro_batch_size),
        stopping=stopping_for(tokenizer, task_stop_token(tokenizer, task), engine.module.generation_config),
        max_new_tokens=inputs.max_new_tokens, rank=rank, world_size=world_size, device=device)
    engine.train()
    metrics = score(task.name, [answer.text for answer in answers], inputs.references, inputs.contexts)
    return {f"valid_gen_{key}": value for key, value in metrics.items() if isinstance(value, (int, float))}
