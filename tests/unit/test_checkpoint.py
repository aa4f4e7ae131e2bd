"""A checkpoint counts only when every worker's files are there (Ray merges uploads one by one)."""

from __future__ import annotations

import json

import pytest

from llmft.checkpoint import find_checkpoints, read_state
from llmft.errors import LlmftError


def make(folder, step, ranks_present, world_size=2, zero_stage=3):
    (folder / "deepspeed").mkdir(parents=True)
    (folder / "llmft_state.json").write_text(json.dumps(
        {"position": {"global_step": step, "epoch": 0, "step_in_epoch": step}, "world_size": world_size,
         "zero_stage": zero_stage, "model": "m", "task": "viggo"}))
    for rank in ranks_present:
        (folder / f"rng_rank{rank}.pt").write_bytes(b"x")
        (folder / "deepspeed" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"x")
    return folder


def test_partial_upload_is_not_a_checkpoint(tmp_path):
    make(tmp_path / "checkpoint_a", 2, [0, 1])
    make(tmp_path / "checkpoint_b", 4, [0])  # rank 1's upload never arrived
    assert [p.name for p in find_checkpoints(tmp_path)] == ["checkpoint_a"]
    with pytest.raises(LlmftError, match="rank_1"):
        read_state(tmp_path / "checkpoint_b")


def test_missing_state_file_and_corrupt_json(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlmftError, match="llmft_state.json is missing"):
        read_state(tmp_path / "empty")
    bad = make(tmp_path / "bad", 1, [0, 1])
    (bad / "llmft_state.json").write_text("{not json")
    with pytest.raises(LlmftError, match="corrupt"):
        read_state(bad)
