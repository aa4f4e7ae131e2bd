"""The optimizer and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from llmft.config import Config


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The one rule for every optimizer llmft builds: weight decay on matrices (linear layers and
    embeddings), none on biases and norm weights.

    Both optimizers take these groups: the torch AdamW client optimizer, and the optimizer
    DeepSpeed builds from its JSON (its CPU Adam under ZeRO-Offload), through
    `deepspeed.initialize(model_parameters=...)`. A group's own `weight_decay` wins over the JSON's.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            shape = getattr(param, "ds_shape", param.shape)  # ZeRO-3 keeps the real shape in ds_shape
            (no_decay if len(shape) < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(groups: list[dict], cfg: Config) -> torch.optim.Optimizer:
    """The client optimizer when DeepSpeed's JSON names none: torch AdamW over `parameter_groups`."""
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
