"""When validation, generation eval and checkpoints happen after an optimizer step; what validation
covers; how the loop collates packed batches for every architecture family."""

from __future__ import annotations

import functools
import importlib
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


# Published configs of each family (tests/fixtures/model_configs), shrunk by llmft.models.tiny.
FAMILY_TARGETS = {"llama-2-7b": "sdpa", "mistral-7b": "sdpa", "qwen2.5-0.5b": "sdpa", "qwen3-8b": "sdpa",
                  "gemma-2-9b": "eager", "gemma-3-1b": "sdpa", "phi-3-mini-4k": "sdpa"}


@pytest.mark.parametrize("target", FAMILY_TARGETS)
def test_packed_batches_give_each_families_own_loss(target):
    """The loop's batches, packed, give each example exactly the loss the model gives it alone.

    What this catches: packing that lets examples attend to each other, or that overrides a
    family's own attention pattern (a block mask drops Mistral's, Gemma's and Phi-3's sliding
    windows: the loss then differs by 0.02-0.9 here)."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from llmft.models.tiny import tiny_config
    from llmft.train.loop import batch_arguments
    from llmft.train.loss import forward_loss
    from tests.support import fixture_model_config
    from tests.support.batches import random_examples
    from tests.support.tiny_tokenizer import make_tokenizer

    config = tiny_config(fixture_model_config(target), make_tokenizer())
    if getattr(config, "sliding_window", None):
        config.sliding_window = 8  # shorter than most examples (3-22 tokens), so the windows matter
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=FAMILY_TARGETS[target]).eval()
    data = random_examples(14, vocab=config.vocab_size)
    rows = [list(range(0, 9)), list(range(9, 14))]  # packed rows of about 100 and 60 tokens
    with torch.no_grad():
        packed, stats = forward_loss(model, data, rows, **batch_arguments(0, torch.device("cpu")))
        alone = 0.0
        for i in range(len(data)):
            ids, labels = (torch.from_numpy(a.astype("int64")) for a in data.example(i))
            logits = model(input_ids=ids[None]).logits[0, :-1]
            alone += float(F.cross_entropy(logits, labels[1:], ignore_index=-100, reduction="sum"))
    assert stats.trained_tokens == sum(data.num_trained)
    assert float(packed) == pytest.approx(alone, rel=1e-5)


def test_workers_do_not_build_the_shared_memory_comm_op(monkeypatch):
    import deepspeed.ops

    comm = importlib.import_module("deepspeed.comm.torch")  # `deepspeed.comm.torch` the attribute is torch

    # Put DeepSpeed's record back afterwards, whatever the function did to it.
    monkeypatch.setitem(deepspeed.ops.__compatible_ops__, "deepspeed_shm_comm",
                        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"])
    loop.skip_shared_memory_comm()
    # What DeepSpeed's comm layer calls when it starts: None means no build and no load.
    assert comm.build_shm_op() is None
