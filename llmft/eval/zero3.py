"""`llmft eval`'s zero3 engine: a Ray Train worker group holding the model partitioned with ZeRO-3.

The model loads as it does for training (`models.loading.load_model` under transformers'
`HfDeepSpeedConfig`, so no process ever holds it whole) and generates with the training loop's
own code (`generate_sharded`): each worker answers its share of the batches, greedy, and every
forward pass gathers each layer's weights from all workers. That runs a 70B model on 32 x 24 GB
GPUs, and any model on CPU workers. DeepSpeed without an optimizer is ZeRO-Inference: the
parameters stay partitioned and nothing is allocated for training.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from llmft.config import Config
from llmft.eval.generate import Answer


@dataclass
class Zero3Input:
    """Everything a zero3 eval worker gets from the driver."""

    config: Config               # the eval's config: model, dtype, scaling, deepspeed.offload_params
    prompts: list[str]
    batches: list[list[int]]     # prompt indices per generation batch, as every engine uses them
    stop_token: str | None
    max_new_tokens: int


def inference_deepspeed_config(cfg: Config, hidden_size: int | None) -> dict:
    """The DeepSpeed JSON for ZeRO-3 inference: the run's parameter offload and bucket sizes, one
    sequence per step for DeepSpeed's batch arithmetic, and no optimizer."""
    from llmft.train.deepspeed import build_deepspeed_config

    workers = cfg.world_size
    cfg = cfg.model_copy(update={
        "deepspeed": cfg.deepspeed.model_copy(update={"zero_stage": 3, "offload_optimizer": "none", "config_file": None}),
        "training": cfg.training.model_copy(update={"micro_batch_size": 1, "global_batch_size": workers}),
    })
    return build_deepspeed_config(cfg, hidden_size=hidden_size)


def eval_loop_per_worker(inputs: Zero3Input) -> list[Answer] | None:
    """One worker: join the group, load the model partitioned, answer its batches. Rank 0 returns
    every answer (Ray Train hands rank 0's return value to the driver)."""
    import deepspeed

    from llmft.eval.generate import generate_sharded, generation_tokenizer, stopping_for
    from llmft.models.architecture import local_hidden_size
    from llmft.models.loading import load_model
    from llmft.train.deepspeed import training_dtype
    from llmft.train.loop import join_worker_group

    cfg = inputs.config
    rank, world_size, device = join_worker_group(cfg)
    tokenizer = generation_tokenizer(cfg)
    ds_config = inference_deepspeed_config(cfg, local_hidden_size(cfg.model.name_or_path))
    model = load_model(cfg, tokenizer, ds_config, training_dtype(cfg))
    engine, *_ = deepspeed.initialize(model=model, config=ds_config)
    engine.eval()
    answers = generate_sharded(engine.module, tokenizer, inputs.prompts, inputs.batches,
                               stopping=stopping_for(tokenizer, inputs.stop_token, engine.module.generation_config),
                               max_new_tokens=inputs.max_new_tokens, rank=rank, world_size=world_size, device=device)
    return answers if rank == 0 else None


def generate_with_zero3(cfg: Config, prompts: list[str], batches: list[list[int]], *, stop_token: str | None,
                        max_new_tokens: int) -> list[Answer]:
    """Answers to `prompts`, in order, from one ZeRO-3 group of `cfg.scaling.num_workers` workers."""
    import tempfile

    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer

    from llmft.train.driver import fit, scaling_config, worker_env

    inputs = Zero3Input(config=cfg, prompts=prompts, batches=batches, stop_token=stop_token,
                        max_new_tokens=max_new_tokens)
    # Nothing is checkpointed: Ray Train's run folder only holds its bookkeeping.
    with tempfile.TemporaryDirectory(prefix="llmft-eval-") as storage:
        trainer = TorchTrainer(
            functools.partial(eval_loop_per_worker, inputs), scaling_config=scaling_config(cfg),
            run_config=RunConfig(name="zero3-eval", storage_path=storage,
                                 worker_runtime_env={"env_vars": worker_env(None, cpu=not cfg.scaling.use_gpu)}))
        return fit(trainer).return_value
