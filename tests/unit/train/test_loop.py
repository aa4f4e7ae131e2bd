"""When validation, generation eval and checkpoints happen after an optimizer step, and how the loop
collates packed batches for every architecture family."""

from __future__ import annotations

import pytest
import torch

from llmft.config import Config
from llmft.train.loop import due_after_step


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
        for ids, labels in zip(data.input_ids, data.labels):
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            alone += float(F.cross_entropy(logits, torch.tensor(labels[1:]), ignore_index=-100, reduction="sum"))
    assert stats.trained_tokens == sum(data.num_trained)
    assert float(packed) == pytest.approx(alone, rel=1e-5)
