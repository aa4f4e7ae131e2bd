"""Pieces of the worker loop that need no Ray: schedule and optimizer groups."""

from __future__ import annotations

import pytest
import torch

from llmft.config import Config
from llmft.train.optim import build_optimizer, lr_lambda, parameter_groups


def cfg(**training) -> Config:
    return Config.model_validate({"model": {"name_or_path": "m"}, "data": {"task": "viggo", "train": "sample:viggo"},
                                  "training": training})


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_warmup_then_decay_to_zero(schedule):
    multiplier = lr_lambda(cfg(warmup_steps=4, lr_schedule=schedule), total_steps=20)
    warm = [multiplier(s) for s in range(4)]
    assert warm == sorted(warm) and warm[0] > 0 and warm[-1] < 1
    assert multiplier(4) == pytest.approx(1.0)
    decay = [multiplier(s) for s in range(4, 21)]
    assert decay == sorted(decay, reverse=True) and decay[-1] == pytest.approx(0.0, abs=1e-9)


def test_warmup_ratio_and_constant():
    multiplier = lr_lambda(cfg(warmup_ratio=0.25, lr_schedule="constant"), total_steps=8)
    assert multiplier(0) < 1 and multiplier(2) == 1.0 and multiplier(7) == 1.0


def test_no_weight_decay_on_norms_and_biases_even_when_partitioned():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    for param in model.parameters():  # what ZeRO-3 leaves on a rank: empty data, real shape in ds_shape
        param.ds_shape = param.shape
        param.data = torch.empty(0)
    optimizer = build_optimizer(parameter_groups(model, 0.1), cfg(weight_decay=0.1))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and len(decayed["params"]) == 1  # the Linear weight
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 3
