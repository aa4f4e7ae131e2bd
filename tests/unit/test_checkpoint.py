"""A checkpoint counts only when its manifests match what is actually there.

Each worker's part is written by the checkpoint module's own writers (state, manifest) and then
"uploaded" file by file into the checkpoint folder, as Ray merges the workers' uploads; a crash
can stop that at any file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from llmft import storage
from llmft.checkpoint import (
    CHECKSUM_SPAN,
    STATE_FILE,
    Position,
    find_checkpoints,
    first_on_its_node,
    manifest_name,
    problems,
    read_state,
    write_manifest,
    write_state,
)
from llmft.errors import LlmftError
from llmft.train.hooks import SAVE_FAULT_PHASES, uploaded_before_crash
from tests.support import model_config
from tests.support.s3 import s3_server  # noqa: F401  (fixture)

WORLD_SIZE = 2


def worker_part(root: Path, rank: int, step: int) -> Path:
    """What worker `rank` writes into its local folder for a save at `step` (shards are stand-ins)."""
    folder = root / f"part-step{step}-rank{rank}"
    (folder / "deepspeed").mkdir(parents=True)
    (folder / "deepspeed" / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").write_bytes(bytes([rank]) * 3000)
    (folder / "deepspeed" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(bytes(range(256)) * 40)
    (folder / f"rng_rank{rank}.pt").write_bytes(b"rng" * 10)
    if rank == 0:
        (folder / "model").mkdir()
        (folder / "model" / "config.json").write_text("{}")
        write_state(folder, model_config("m"), Position(global_step=step, epoch=0, step_in_epoch=step), {},
                    world_size=WORLD_SIZE)
    write_manifest(folder, rank=rank, world_size=WORLD_SIZE)
    return folder


def save(run: Path, step: int, keep=lambda name, rank: True) -> Path:
    """Every worker's part "uploaded" into `run/checkpoint_<step>`, only the files `keep` lets through."""
    checkpoint = run / f"checkpoint_{step:06d}"
    for rank in range(WORLD_SIZE):
        part = worker_part(run.parent / "local", rank, step)
        for path in sorted(p for p in part.rglob("*") if p.is_file()):
            name = path.relative_to(part).as_posix()
            if keep(name, rank):
                (checkpoint / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, checkpoint / name)
    return checkpoint


def test_a_complete_checkpoint_reads_back(tmp_path):
    checkpoint = save(tmp_path / "run", 2)
    assert problems(checkpoint) == (read_state(checkpoint), [])
    assert read_state(checkpoint)["position"]["global_step"] == 2
    # Every file each worker wrote is listed, its manifest excepted.
    listed = json.loads((checkpoint / manifest_name(0)).read_text())["files"]
    assert STATE_FILE in listed and "deepspeed/zero_pp_rank_0_mp_rank_00_model_states.pt" in listed
    assert manifest_name(0) not in listed


@pytest.mark.parametrize("phase", [p for p in SAVE_FAULT_PHASES if p != "truncated_shard"])
def test_a_save_cut_at_any_phase_is_not_a_checkpoint(tmp_path, phase):
    run = tmp_path / "run"
    save(run, 2)
    partial = save(run, 4, keep=lambda name, rank: uploaded_before_crash(phase, name, rank, rank == WORLD_SIZE - 1))
    assert find_checkpoints(run) == [str(run / "checkpoint_000002")]
    with pytest.raises(LlmftError, match="not a complete llmft checkpoint: .*manifest_rank1.json is missing"):
        read_state(partial)


def test_a_missing_or_truncated_shard_is_found(tmp_path):
    checkpoint = save(tmp_path / "run", 2)
    shard = checkpoint / "deepspeed" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(LlmftError, match=r"zero_pp_rank_1_mp_rank_00_optim_states.pt has 10239 bytes, its manifest says 10240"):
        read_state(checkpoint)
    shard.unlink()
    with pytest.raises(LlmftError, match="zero_pp_rank_1_mp_rank_00_optim_states.pt is missing"):
        read_state(checkpoint)
    assert find_checkpoints(tmp_path / "run") == []


def test_same_size_other_bytes_fail_the_checksum(tmp_path):
    checkpoint = save(tmp_path / "run", 2)
    shard = checkpoint / "deepspeed" / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    data = bytearray(shard.read_bytes())
    data[1500] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(LlmftError, match="zero_pp_rank_0_mp_rank_00_model_states.pt does not match its manifest"):
        read_state(checkpoint)


def test_large_files_are_checked_at_start_middle_and_end(tmp_path):
    folder = tmp_path / "part"
    folder.mkdir()
    big = folder / "big.pt"
    big.write_bytes(bytes(range(256)) * (4 * CHECKSUM_SPAN // 256))
    write_manifest(folder, rank=0, world_size=1)
    (folder / STATE_FILE).write_text(json.dumps({"world_size": 1, "position": {}}))
    assert problems(folder)[1] == []
    for offset in (10, 2 * CHECKSUM_SPAN + 10, 4 * CHECKSUM_SPAN - 10):
        data = bytearray(big.read_bytes())
        data[offset] ^= 0xFF
        big.write_bytes(bytes(data))
        assert problems(folder)[1] == ["big.pt does not match its manifest's checksum"], offset
        data[offset] ^= 0xFF
        big.write_bytes(bytes(data))


def test_missing_state_corrupt_json_and_no_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlmftError, match="llmft_state.json is missing"):
        read_state(tmp_path / "empty")
    with pytest.raises(LlmftError, match="does not exist"):
        read_state(tmp_path / "nowhere")
    checkpoint = save(tmp_path / "run", 2)
    (checkpoint / STATE_FILE).write_text("{not json")
    with pytest.raises(LlmftError, match="llmft_state.json is corrupt"):
        read_state(checkpoint)
    checkpoint = save(tmp_path / "run", 4)
    (checkpoint / manifest_name(1)).write_text("{")
    with pytest.raises(LlmftError, match="manifest_rank1.json is corrupt"):
        read_state(checkpoint)


def test_checkpoints_in_a_bucket_are_found_and_checked_the_same_way(s3_server, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    save(run, 2)
    save(run, 4, keep=lambda name, rank: rank == 0)  # rank 1's upload never arrived
    truncated = save(run, 6)
    shard = truncated / "deepspeed" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:-1])
    save(run, 8)
    bucket = s3_server.new_bucket()
    pafs.copy_files(str(run), f"{bucket}/runs/r1", destination_filesystem=s3_server.filesystem())
    remote = s3_server.uri(bucket, "runs/r1")
    found = find_checkpoints(remote)
    assert [storage.basename(c) for c in found] == ["checkpoint_000002", "checkpoint_000008"]
    assert read_state(found[-1])["position"]["global_step"] == 8
    assert problems(storage.join(remote, "checkpoint_000004"))[1] == ["manifest_rank1.json is missing"]
    assert problems(storage.join(remote, "checkpoint_000006"))[1] == [
        "deepspeed/zero_pp_rank_1_mp_rank_00_optim_states.pt has 10239 bytes, its manifest says 10240"]
    with pytest.raises(LlmftError, match="does not exist"):
        read_state(storage.join(remote, "checkpoint_z"))


@pytest.mark.parametrize("node_ids, converting", [
    (["a"], [0]),
    (["a", "a"], [0]),
    (["a", "b"], [0, 1]),  # two Ray nodes, even on one IP (where Ray Train's local ranks are 0 and 1)
    (["a", "b", "a", "b"], [0, 1]),
    (["b", "a", "a", "b"], [0, 1]),
])
def test_the_first_worker_of_each_ray_node_converts_a_universal_checkpoint(node_ids, converting):
    """Each Ray node's scratch gets exactly one converting worker: none would leave that node's
    workers an empty folder to load, two would write over each other."""
    assert [rank for rank in range(len(node_ids)) if first_on_its_node(node_ids, rank)] == converting
