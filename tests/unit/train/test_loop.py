"""When validation, generation eval and checkpoints happen after an optimizer step; what validation covers."""

from __future__ import annotations

import functools
from collections import Counter

import pytest
import torch

from llmft.config import Config
from llmft.train import loop
from llmft.train.loop import due_after_step
from tests.support.batches import random_examples, tiny_llama


def config(**training) -> Config:
    return Config.model_validate({"model": {"name_or_path": "m"}, "data": {"task": "viggo", "train": "sample:viggo"},
                                  "training": training})


def test_every_n_steps_and_always_at_epoch_end_and_the_last_step():
    cfg = config(eval_every_steps=3, checkpoint_every_steps=4, generation_eval_every_steps=2)
    due = {step: due_after_step(cfg, step, epoch_end=False, last=False, can_generate=True) for step in range(1, 9)}
    assert [s for s, d in due.items() if d.validation] == [3, 6]
    assert [s for s, d in due.items() if d.checkpoint] == [4, 8]
    assert [s for s, d in due.items() if d.generation] == [2, 4, 6, 8]
    for flags in ({"epoch_end": True, "last": False}, {"epoch_end": False, "last": True}):
        at_end = due_after_step(cfg, 5, can_generate=True, **flags)
        assert at_end.validation and at_end.checkpoint and not at_end.generation


def test_nothing_is_due_without_intervals_and_generation_needs_inputs():
    quiet = due_after_step(config(), 7, epoch_end=False, last=False, can_generate=True)
    assert not quiet.anything
    no_inputs = due_after_step(config(generation_eval_every_steps=1), 7, epoch_end=False, last=False,
                               can_generate=False)
    assert not no_inputs.anything


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("world_size", [1, 2])
def test_validation_sees_every_example_once_across_workers(packing, world_size, monkeypatch):
    """Fails if validation drops or repeats examples (packed or not), or the workers' forward
    passes differ in number (ZeRO-3 would hang gathering parameters)."""
    model, data = tiny_llama(), random_examples(13, seed=2)
    cfg = config(micro_batch_size=2)
    cfg.data.packing, cfg.data.max_length = packing, 40
    batch_args = {"pad_id": 0, "device": torch.device("cpu"), "block_mask": True}
    seen, passes = [], Counter()
    real_forward_loss = loop.forward_loss

    def recording(engine, data, rows, rank, **kwargs):
        seen.extend(i for row in rows for i in row)
        passes[rank] += 1
        return real_forward_loss(engine, data, rows, **kwargs)

    results = []
    for rank in range(world_size):
        monkeypatch.setattr(loop, "forward_loss", functools.partial(recording, rank=rank))
        results.append(loop.evaluate(model, data, cfg, rank, world_size, batch_args))
    assert sorted(seen) == list(range(13)) and len(set(passes.values())) == 1
    if world_size == 1:
        with torch.no_grad():
            alone = [real_forward_loss(model, data, [[i]], **batch_args) for i in range(13)]
        mean = sum(float(loss) for loss, _ in alone) / sum(stats.trained_tokens for _, stats in alone)
        assert results[0]["valid_loss"] == pytest.approx(mean, rel=1e-5)
