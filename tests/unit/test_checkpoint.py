"""A checkpoint counts only when every worker's files are there (Ray merges uploads one by one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmft import storage
from llmft.checkpoint import find_checkpoints, read_state
from llmft.errors import LlmftError
from tests.support.s3 import s3_server  # noqa: F401  (fixture)


def make(folder, step, ranks_present, world_size=2, zero_stage=3, config=None, prefix=""):
    (folder / "deepspeed").mkdir(parents=True)
    (folder / "llmft_state.json").write_text(json.dumps(
        {"position": {"global_step": step, "epoch": 0, "step_in_epoch": step}, "world_size": world_size,
         "zero_stage": zero_stage, "model": "m", "task": "viggo", **({"config": config} if config else {})}))
    for rank in ranks_present:
        (folder / f"rng_rank{rank}.pt").write_bytes(b"x")
        (folder / "deepspeed" / f"{prefix}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"x")
    return folder


def test_a_bf16_run_names_its_optimizer_shards_as_deepspeed_does(tmp_path):
    # DeepSpeed writes bf16_zero_pp_rank_<R>_... when it trains in bf16 (every shipped recipe does).
    bf16 = {"model": {"name_or_path": "m", "dtype": "bfloat16"}, "data": {"task": "viggo", "train": "sample:viggo"}}
    make(tmp_path / "checkpoint_a", 2, [0, 1], config=bf16, prefix="bf16_")
    make(tmp_path / "checkpoint_b", 4, [0, 1], config=bf16)  # fp32 names under a bf16 run: not its files
    assert [Path(p).name for p in find_checkpoints(tmp_path)] == ["checkpoint_a"]
    with pytest.raises(LlmftError, match="bf16_zero_pp_rank_0"):
        read_state(tmp_path / "checkpoint_b")


def test_partial_upload_is_not_a_checkpoint(tmp_path):
    make(tmp_path / "checkpoint_a", 2, [0, 1])
    make(tmp_path / "checkpoint_b", 4, [0])  # rank 1's upload never arrived
    assert [Path(p).name for p in find_checkpoints(tmp_path)] == ["checkpoint_a"]
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


def test_checkpoints_in_a_bucket_are_found_and_checked_the_same_way(s3_server, tmp_path):  # noqa: F811
    import pyarrow.fs as pafs

    make(tmp_path / "run" / "checkpoint_a", 2, [0, 1])
    make(tmp_path / "run" / "checkpoint_b", 4, [0])
    make(tmp_path / "run" / "checkpoint_c", 6, [0, 1])
    bucket = s3_server.new_bucket()
    pafs.copy_files(str(tmp_path / "run"), f"{bucket}/runs/r1", destination_filesystem=s3_server.filesystem())
    run = s3_server.uri(bucket, "runs/r1")
    found = find_checkpoints(run)
    assert [storage.basename(c) for c in found] == ["checkpoint_a", "checkpoint_c"]
    assert read_state(found[-1])["position"]["global_step"] == 6
    with pytest.raises(LlmftError, match="rank_1"):
        read_state(storage.join(run, "checkpoint_b"))
    with pytest.raises(LlmftError, match="does not exist"):
        read_state(storage.join(run, "checkpoint_z"))
