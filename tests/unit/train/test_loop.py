"""When validation, generation eval and checkpoints happen after an optimizer step."""

from __future__ import annotations

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
