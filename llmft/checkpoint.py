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


def restore(engine, checkpoint, cfg: Config, *, world_size: int, rank: int) -> Position:
    """Load DeepSpeed state and RNG states from `checkpoint` (a Ray Checkpoint or None)."""
    if checkpoint is None:
        return Position()
    with checkpoint.as_directory() as folder:
        state = read_state(folder)
        check_compatible(state, cfg, world_size, where=folder)
        load_path, _ = engine.load_checkpoint(folder, tag=DEEPSPEED_TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if load_path is None:
            raise LlmftError(f"Checkpoint {folder} has no DeepSpeed state under {DEEPSPEED_TAG}/.")
        rng_file = Path(folder) / f"rng_rank{rank}.pt"
        if rng_file.exists():
            _set_rng_states(torch.load(rng_file, weights_only=False))
    return Position(**state["position"])


def newest(ray_checkpoint, resume_path: str | None):
    """The checkpoint to start from: Ray's (after a restart, or the run's latest on `--resume
    latest`) or the one named by `--resume`, whichever is further along. Ray's can be older than
    the newest complete one in storage: it only records a checkpoint once every upload returned."""
    import ray.train

    if not resume_path:
        return ray_checkpoint
    explicit = ray.train.Checkpoint(resume_path)
    if ray_checkpoint is None:
        return explicit
    ray_step = checkpoint_state(ray_checkpoint)["position"]["global_step"]
    return explicit if read_state(resume_path)["position"]["global_step"] > ray_step else ray_checkpoint


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
        expected += [f"{DEEPSPEED_TAG}/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
                     for rank in range(state["world_size"])]
    return expected


def is_complete(folder: str | os.PathLike) -> bool:
    try:
        read_state(folder)
        return True
    except LlmftError:
        return False


def check_compatible(state: dict[str, Any], cfg: Config, world_size: int, where: str | os.PathLike) -> None:
    """Refuse resumes that cannot be exact: another model or another ZeRO sharding."""
    if state["model"] != cfg.model.name_or_path:
        raise LlmftError(f"Checkpoint {where} was trained from model {state['model']!r}, but the config says "
                         f"{cfg.model.name_or_path!r}. Resume with the same model, or start a new run "
                         "from the exported model (llmft export) as model.name_or_path.")
    if state["world_size"] != world_size or state["zero_stage"] != cfg.deepspeed.zero_stage:
        raise LlmftError(f"Checkpoint {where} was saved by {state['world_size']} workers with ZeRO-{state['zero_stage']}; "
                         f"this run has {world_size} workers with ZeRO-{cfg.deepspeed.zero_stage}. Sharded optimizer "
                         "state cannot be resumed exactly across that change: resume with the same "
                         "scaling.num_workers and deepspeed.zero_stage, or export the checkpoint and start a new run from it.")


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
