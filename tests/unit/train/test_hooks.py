"""The test-only hooks: a trace record is what the model received in a training forward pass."""

from __future__ import annotations

import json

import pytest
import torch

from llmft.train.hooks import TraceAndFaultHooks, input_ids_hash
from tests.support.batches import tiny_llama


def test_a_record_is_written_after_a_training_forward_with_the_tensor_the_model_got(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMFT_TRACE_DIR", str(tmp_path))
    hooks = TraceAndFaultHooks(rank=1, world_size=2)
    model = tiny_llama().train()
    hooks.watch(model)
    fed = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]])
    hooks.feeding(step=3, epoch=0, micro=1, rows=[[4, 7], [2]])
    assert not (tmp_path / "examples_rank1.jsonl").exists()  # nothing before the forward pass
    model(input_ids=fed, use_cache=False)
    model(input_ids=fed + 1, use_cache=False)  # not announced by `feeding`: not recorded
    model.eval()
    hooks.feeding(step=4, epoch=0, micro=0, rows=[[1]])
    model(input_ids=fed, use_cache=False)  # evaluation: not recorded
    (record,) = [json.loads(line) for line in (tmp_path / "examples_rank1.jsonl").read_text().splitlines()]
    assert record == {"attempt": hooks.attempt, "rank": 1, "step": 3, "epoch": 0, "micro": 1, "rows": [[4, 7], [2]],
                      "input_ids_sha1": input_ids_hash(fed)}
    assert input_ids_hash(fed) != input_ids_hash(fed + 1) and input_ids_hash(fed) != input_ids_hash(fed.reshape(1, 8))


def test_fault_settings_are_parsed_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMFT_FAULT_KILL_AT_STEP", "5:1,9:0")
    monkeypatch.setenv("LLMFT_FAULT_SAVE", "4:before_manifest")
    monkeypatch.setenv("LLMFT_FAULT_MARKER", str(tmp_path / "faults"))
    hooks = TraceAndFaultHooks(rank=0, world_size=2)
    assert hooks.kills == {5: 1, 9: 0} and hooks.save_fault == {4: "before_manifest"}
    assert hooks.checkpoint_upload(2) is None and callable(hooks.checkpoint_upload(4))
    hooks.maybe_crash(5)  # rank 1's kill: rank 0 carries on
    monkeypatch.setenv("LLMFT_FAULT_SAVE", "4:during_lunch")
    with pytest.raises(ValueError, match="during_lunch"):
        TraceAndFaultHooks(rank=0, world_size=2)
