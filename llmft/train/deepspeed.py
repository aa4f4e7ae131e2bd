"""The DeepSpeed JSON a run uses, derived from the llmft config.

Batch sizes, gradient clipping and precision always come from the llmft config, so they are said
once. A user's own DeepSpeed JSON (`deepspeed.config_file`) may leave them `"auto"`; a value that
contradicts the llmft config is an error rather than a silent surprise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmft.config import Config
from llmft.errors import LlmftError


def training_dtype(cfg: Config) -> str:
    """`bfloat16` on GPU and `float32` on CPU unless the config says otherwise."""
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    return "bfloat16" if cfg.scaling.use_gpu else "float32"


def build_deepspeed_config(cfg: Config, hidden_size: int | None = None, world_size: int | None = None,
                           load_universal: bool = False) -> dict[str, Any]:
    """The resolved DeepSpeed config for `cfg` at `world_size` workers (default: the most the run
    has). `hidden_size` sizes ZeRO's buckets when known. `load_universal` lets the engine load a
    universal checkpoint (ZeRO states re-partitioned for another world size), and only that."""
    config = _generated(cfg, hidden_size, world_size or cfg.world_size)
    if cfg.deepspeed.config_file:
        config = _merge_user_file(cfg, config, Path(cfg.deepspeed.config_file))
    if load_universal:
        config["checkpoint"] = {**config.get("checkpoint", {}), "load_universal": True}
    return config


def _generated(cfg: Config, hidden_size: int | None, world_size: int) -> dict[str, Any]:
    ds = cfg.deepspeed
    dtype = training_dtype(cfg)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero["overlap_comm"] = cfg.scaling.use_gpu if ds.overlap_comm is None else ds.overlap_comm
        zero["contiguous_gradients"] = True
    if ds.zero_stage >= 2:
        zero["reduce_scatter"] = True
    if ds.offload_optimizer != "none":
        zero["offload_optimizer"] = _offload(ds.offload_optimizer, ds.nvme_path)
    if ds.offload_params != "none":
        zero["offload_param"] = _offload(ds.offload_params, ds.nvme_path)
    # DeepSpeed's fixed defaults (5e8-element buckets, 1e5 persistence) are tuned for big models
    # on GPUs; at small scale they waste memory and time (with them, SmolLM2-135M under ZeRO-3 took
    # 6.1 GB on one CPU worker and 4.65 GB on each of two, for 2.2 GB of model states in all).
    # Size them to the model, as the transformers integration does for its "auto" values.
    if hidden_size and ds.zero_stage >= 2:
        zero["reduce_bucket_size"] = ds.reduce_bucket_size or hidden_size * hidden_size
        zero["allgather_bucket_size"] = zero["reduce_bucket_size"]
    elif ds.reduce_bucket_size:
        zero["reduce_bucket_size"] = ds.reduce_bucket_size
    if ds.zero_stage == 3:
        if hidden_size:
            zero["stage3_prefetch_bucket_size"] = int(0.9 * hidden_size * hidden_size)
            zero["stage3_param_persistence_threshold"] = 10 * hidden_size
            zero["stage3_max_live_parameters"] = 4 * hidden_size * hidden_size * 4
        for key in ("stage3_prefetch_bucket_size", "stage3_param_persistence_threshold", "stage3_max_live_parameters"):
            if getattr(ds, key) is not None:
                zero[key] = getattr(ds, key)
        # Needed so a ZeRO-3 checkpoint can be exported without consolidating the full model on one GPU.
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.training.micro_batch_size,
        "gradient_accumulation_steps": cfg.accumulation_steps(world_size),
        "train_batch_size": cfg.global_batch_size,
        "gradient_clipping": cfg.training.max_grad_norm or 0.0,
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "zero_optimization": zero,
        # Without offload a plain torch AdamW is the client optimizer: DeepSpeed's fused Adam needs a GPU.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer != "none":
        # Offloaded optimizer states are stepped on the CPU by DeepSpeed's fused CPU Adam.
        beta1, beta2 = cfg.training.adam_betas
        config["optimizer"] = {"type": "AdamW", "params": {
            "lr": cfg.training.learning_rate, "betas": [beta1, beta2],
            "eps": cfg.training.adam_eps, "weight_decay": cfg.training.weight_decay}}
    return config


def _offload(device: str, nvme_path: str | None) -> dict[str, Any]:
    section: dict[str, Any] = {"device": device, "pin_memory": True}
    if device == "nvme":
        section["nvme_path"] = nvme_path
    return section


# Keys whose value llmft owns; a user JSON may say "auto" or repeat the same value.
_OWNED = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
          "gradient_clipping")


def _merge_user_file(cfg: Config, generated: dict[str, Any], path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LlmftError(f"deepspeed.config_file: {path} does not exist. Give the path of a DeepSpeed "
                         "JSON (relative to the current directory) or remove the key to use the generated one.")
    try:
        user = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LlmftError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}.") from None
    if not isinstance(user, dict):
        raise LlmftError(f"{path}: a DeepSpeed config must be a JSON object.")
    merged = _fill_auto(user, generated)
    for key in _OWNED:
        if key in user and user[key] != "auto" and user[key] != generated[key]:
            raise LlmftError(
                f"{path}: `{key}` is {user[key]!r} but the llmft config gives {generated[key]!r} "
                f"(from training.* and scaling.num_workers). Set it to \"auto\" in the JSON, or change the llmft config.")
    for precision in ("bf16", "fp16"):
        enabled = (user.get(precision) or {}).get("enabled")
        if enabled not in (None, "auto") and enabled != generated[precision]["enabled"]:
            raise LlmftError(
                f"{path}: `{precision}.enabled` is {enabled!r} but the run trains in {training_dtype(cfg)} "
                "(model.dtype). Set it to \"auto\" or change model.dtype.")
    stage = (user.get("zero_optimization") or {}).get("stage", "auto")
    if stage != "auto" and "zero_stage" in cfg.deepspeed.model_fields_set and stage != cfg.deepspeed.zero_stage:
        raise LlmftError(f"{path}: `zero_optimization.stage` is {stage} but deepspeed.zero_stage is "
                         f"{cfg.deepspeed.zero_stage}. Say the stage in one place.")
    merged.setdefault("zero_force_ds_cpu_optimizer", False)
    merged.setdefault("zero_allow_untested_optimizer", True)
    return merged


def _fill_auto(user: Any, generated: Any) -> Any:
    """Replace "auto" in `user` by the generated value at the same place (recursively)."""
    if isinstance(user, dict):
        gen = generated if isinstance(generated, dict) else {}
        out = {key: _fill_auto(value, gen.get(key)) for key, value in user.items()}
        for key, value in gen.items():
            if key in _OWNED or key in ("bf16", "fp16"):
                out.setdefault(key, value)
        return out
    if user == "auto":
        if generated is None:
            raise LlmftError("A DeepSpeed config value is \"auto\" where llmft has no value to fill in; "
                             "give it explicitly.")
        return generated
    return user


def zero_stage_of(ds_config: dict[str, Any]) -> int:
    return int((ds_config.get("zero_optimization") or {}).get("stage", 0))


def skip_single_rank_allreduce(engine) -> bool:
    """Turn off the gradient all-reduce of a 1-rank, unsharded (stage 0), 32-bit engine; True if done.

    DeepSpeed runs it at every accumulation boundary whatever the world size: it flattens every
    gradient into one buffer, all-reduces the buffer with itself and copies it back. With one rank
    that is the identity; skipping it took SmolLM2-135M's peak (1 worker, 2 CPU threads) from 4.30
    to 4.03 GiB and its step time down about 2%. Stages 1-3 move
    gradients into their partitions in the same call, and the 16-bit optimizers hook into it, so
    those engines keep it."""
    if engine.world_size != 1 or engine.zero_optimization_stage() != 0 or engine.bfloat16_enabled() or engine.fp16_enabled():
        return False
    engine.enable_backward_allreduce = False  # DeepSpeed's own switch for it
    return True


# Written by rank 0 into the run folder: the engine DeepSpeed built, as opposed to the one asked for.
ENGINE_FILE = "engine.json"


def describe_engine(engine) -> dict[str, Any]:
    """What DeepSpeed actually runs: the optimizer class that steps (its CPU Adam under offload,
    else the client AdamW), ZeRO stage, where states live, precision, and the model's settings."""
    def device(offload) -> str:
        return "none" if offload is None else str(getattr(offload.device, "value", offload.device))

    module = engine.module
    precision = "bfloat16" if engine.bfloat16_enabled() else "float16" if engine.fp16_enabled() else "float32"
    return {
        "optimizer": type(engine.basic_optimizer).__name__,
        "weight_decay_per_group": [group["weight_decay"] for group in engine.basic_optimizer.param_groups],
        "zero_optimizer": type(engine.optimizer).__name__,
        "zero_stage": engine.zero_optimization_stage(),
        "offload_optimizer": device(engine.zero_offload_optimizer()),
        "offload_params": device(engine.zero_offload_param()),
        "precision": precision,
        "parameter_dtype": str(next(module.parameters()).dtype).removeprefix("torch."),
        "gradient_checkpointing": bool(getattr(module, "is_gradient_checkpointing", False)),
        "attn_implementation": module.config._attn_implementation,
        "world_size": engine.world_size,
        "device": str(engine.device),
        "gradient_allreduce": bool(engine.enable_backward_allreduce),
    }
