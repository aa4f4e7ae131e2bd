"""Checkpoints: save and restore a run exactly, and export a Hugging Face model.

A checkpoint folder, as Ray Train persists it (each worker's files merged into one folder):

    deepspeed/            DeepSpeed's sharded model, optimizer and scheduler state (tag "deepspeed")
    rng_rank<R>.pt        each worker's RNG states
    model/                the model's config.json (vocabulary already resized)
    tokenizer/            the tokenizer with the task's special tokens
    llmft_state.json      data position, world size, config; written last, so its presence
                          means the folder is complete

Ray registers a checkpoint only once `ray.train.report` has persisted it, so a crash while saving
leaves the previous checkpoint as the latest; `restore` also refuses a folder without
`llmft_state.json`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmft import storage
from llmft.config import Config
from llmft.errors import LlmftError
from llmft.files import write_text_atomic

STATE_FILE = "llmft_state.json"
DEEPSPEED_TAG = "deepspeed"


@dataclass
class Position:
    """Where a run is: optimizer steps done, and the next global batch to train (epoch, index)."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0


def save_and_report(engine, tokenizer, cfg: Config, position: Position, metrics: dict[str, Any], *,
                    rank: int, world_size: int) -> None:
    """Every worker saves its shards to a local folder; Ray merges and persists them."""
    import ray.train

    folder = Path(tempfile.mkdtemp(prefix="llmft-checkpoint-"))
    try:
        engine.save_checkpoint(str(folder), tag=DEEPSPEED_TAG, save_latest=False)
        torch.save(_rng_states(), folder / f"rng_rank{rank}.pt")
        if rank == 0:
            engine.module.config.save_pretrained(folder / "model")
            tokenizer.save_pretrained(folder / "tokenizer")
            state = {"position": asdict(position), "world_size": world_size,
                     "zero_stage": cfg.deepspeed.zero_stage, "model": cfg.model.name_or_path,
                     "task": cfg.data.task, "metrics": metrics, "config": cfg.model_dump(mode="json")}
            write_text_atomic(folder / STATE_FILE, json.dumps(state, indent=2))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def needs_resharding(checkpoint, world_size: int) -> bool:
    """Whether `checkpoint` (a Ray Checkpoint or None) holds ZeRO-partitioned states of another
    world size: then it is loaded as a DeepSpeed universal checkpoint (see `restore`)."""
    if checkpoint is None:
        return False
    state = checkpoint_state(checkpoint)
    return state["world_size"] != world_size and state["zero_stage"] >= 1


def restore(engine, checkpoint, cfg: Config, *, world_size: int, rank: int, local_rank: int) -> Position:
    """Load DeepSpeed state and RNG states from `checkpoint` (a Ray Checkpoint or None).

    A checkpoint of another world size (an elastic run after a node loss, or `--resume` with
    another scaling.num_workers) has its ZeRO partitions re-cut by DeepSpeed's universal
    checkpoints; the engine must then have been built with `load_universal` (needs_resharding).
    """
    if checkpoint is None:
        return Position()
    with checkpoint.as_directory() as folder:
        state = read_state(folder)
        check_compatible(state, cfg, where=folder)
        if needs_resharding(checkpoint, world_size):
            _load_universal(engine, Path(folder), key=f"{checkpoint.path}@{world_size}", local_rank=local_rank)
        else:
            load_path, _ = engine.load_checkpoint(folder, tag=DEEPSPEED_TAG, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
            if load_path is None:
                raise LlmftError(f"Checkpoint {folder} has no DeepSpeed state under {DEEPSPEED_TAG}/.")
        rng_file = Path(folder) / f"rng_rank{rank}.pt"
        if rng_file.exists():  # a rank the saving run did not have keeps the seeded state
            _set_rng_states(torch.load(rng_file, weights_only=False))
    return Position(**state["position"])


def _load_universal(engine, folder: Path, *, key: str, local_rank: int) -> None:
    """DeepSpeed converts the checkpoint to its universal format (once per node, into node-local
    scratch, never into the checkpoint) and the engine loads it, re-partitioned for this world
    size. Two DeepSpeed 0.19 details are undone afterwards (see comments)."""
    import argparse

    import ray
    import torch.distributed as dist
    from deepspeed.checkpoint import ds_to_universal

    node = ray.get_runtime_context().get_node_id()[:12]
    scratch = Path(tempfile.gettempdir()) / f"llmft-universal-{node}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if local_rank == 0:
        shutil.rmtree(scratch, ignore_errors=True)
        ds_to_universal.main(argparse.Namespace(
            input_folder=str(folder / DEEPSPEED_TAG), output_folder=str(scratch / DEEPSPEED_TAG),
            num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
            inject_missing_state=False))
    dist.barrier()
    own_settings = [{k: v for k, v in group.items() if k not in ("params", "lr")} for group in engine.optimizer.param_groups]
    load_path, _ = engine.load_checkpoint(str(scratch), tag=DEEPSPEED_TAG, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise LlmftError(f"Checkpoint {folder}: DeepSpeed could not load its universal conversion.")
    # The universal load gives every param group group 0's settings: a no-decay group would
    # gain weight decay. Each group gets its own back (the lr is the scheduler's, already right).
    for group, settings in zip(engine.optimizer.param_groups, own_settings):
        group.update(settings)
    # ...and one `step` tensor to every ZeRO-3 sub-group, which torch's AdamW then increments in
    # place once per group per step: give each its own copy.
    for param_state in engine.optimizer.state.values():
        if torch.is_tensor(param_state.get("step")):
            param_state["step"] = param_state["step"].clone()
    dist.barrier()
    if local_rank == 0:
        shutil.rmtree(scratch, ignore_errors=True)


def newest(ray_checkpoint, resume_path: str | None, run_dir: str):
    """The checkpoint to start from, the furthest along of: Ray's (after a restart), the one named
    by `--resume`, and the newest complete one in the run folder. After a restart Ray can hand
    back an older checkpoint than the last one every worker finished uploading (measured: after
    a node loss it gave step 2 when step 4 was complete in the bucket)."""
    import ray.train

    candidates = [ray_checkpoint] if ray_checkpoint is not None else []
    candidates += [ray.train.Checkpoint(path) for path in (resume_path, *find_checkpoints(run_dir)[-1:]) if path]
    if not candidates:
        return None
    return max(candidates, key=lambda c: checkpoint_state(c)["position"]["global_step"])


def read_state(folder: str | os.PathLike) -> dict[str, Any]:
    """The state file of a complete checkpoint (a local folder or a storage URI); LlmftError otherwise."""
    fs, path = storage.resolve(folder)
    return _read_state(fs, path, storage.shown(str(folder)))


def checkpoint_state(checkpoint) -> dict[str, Any]:
    """`read_state` of a Ray Checkpoint, read where it lies (nothing else is downloaded)."""
    return _read_state(checkpoint.filesystem, checkpoint.path, checkpoint.path)


def _read_state(fs, path: str, shown: str) -> dict[str, Any]:
    import pyarrow.fs as pafs

    try:
        found = fs.get_file_info(path).type == pafs.FileType.Directory
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True)) if found else []
    except OSError as exc:
        raise LlmftError(f"Checkpoint {shown} cannot be read: {exc}") from None
    files = {info.path[len(path.rstrip("/")) + 1:] for info in infos if info.type == pafs.FileType.File}
    if not found:
        raise LlmftError(f"Checkpoint {shown} does not exist. Give a checkpoint folder, "
                         "e.g. outputs/<run>/checkpoint_<time>/ (`ls outputs/<run>` lists them).")
    if STATE_FILE not in files:
        raise LlmftError(f"{shown} is not a complete llmft checkpoint: {STATE_FILE} is missing "
                         "(it is written last, so the save was interrupted or this is another folder).")
    with fs.open_input_stream(f"{path.rstrip('/')}/{STATE_FILE}") as stream:
        text = stream.read().decode("utf-8")
    try:
        state = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LlmftError(f"{shown}/{STATE_FILE} is corrupt (invalid JSON at line {exc.lineno}); use an earlier checkpoint.") from None
    missing = [name for name in rank_files(state) if name not in files]
    if missing:
        raise LlmftError(f"{shown} is not a complete llmft checkpoint: {', '.join(missing[:3])} missing (each "
                         "worker uploads its own shards, and this save was interrupted). Use an earlier checkpoint.")
    return state


def rank_files(state: dict[str, Any]) -> list[str]:
    """Per-worker files a complete checkpoint has: Ray merges each worker's upload separately."""
    expected = [f"rng_rank{rank}.pt" for rank in range(state["world_size"])]
    if state["zero_stage"] >= 1:
        # DeepSpeed names them with a "bf16_" prefix when it trains in bf16 (_get_zero_ckpt_prefix).
        from llmft.train.deepspeed import training_dtype

        config = state.get("config")
        prefix = "bf16_" if config and training_dtype(Config.model_validate(config)) == "bfloat16" else ""
        expected += [f"{DEEPSPEED_TAG}/{prefix}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
                     for rank in range(state["world_size"])]
    return expected


def is_complete(folder: str | os.PathLike) -> bool:
    try:
        read_state(folder)
        return True
    except LlmftError:
        return False


def check_compatible(state: dict[str, Any], cfg: Config, where: str | os.PathLike) -> None:
    """Refuse resumes that cannot be exact: another model or another ZeRO stage. Another number
    of workers is fine: the states are re-partitioned (universal checkpoints)."""
    if state["model"] != cfg.model.name_or_path:
        raise LlmftError(f"Checkpoint {where} was trained from model {state['model']!r}, but the config says "
                         f"{cfg.model.name_or_path!r}. Resume with the same model, or start a new run "
                         "from the exported model (llmft export) as model.name_or_path.")
    if state["zero_stage"] != cfg.deepspeed.zero_stage:
        raise LlmftError(f"Checkpoint {where} was saved with ZeRO-{state['zero_stage']}; this run has "
                         f"ZeRO-{cfg.deepspeed.zero_stage}. Resume with the same deepspeed.zero_stage, or export "
                         "the checkpoint and start a new run from it.")


def find_checkpoints(run_dir: str | os.PathLike) -> list[str]:
    """Complete checkpoints of a run (a local folder or a storage URI), oldest first."""
    steps = {}
    for folder in storage.list_folders(str(run_dir), prefix="checkpoint_"):
        with contextlib.suppress(LlmftError):
            steps[folder] = read_state(folder)["position"]["global_step"]
    return sorted(steps, key=steps.get)


def _rng_states() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
