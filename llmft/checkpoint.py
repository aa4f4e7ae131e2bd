"""Checkpoints: save and restore a run exactly; tell a complete checkpoint from a partial one.

A checkpoint folder, as Ray Train persists it (each worker's files merged into one folder):

    deepspeed/               DeepSpeed's sharded model, optimizer and scheduler state (tag "deepspeed")
    rng_rank<R>.pt           each worker's RNG states
    model/                   the model's config.json (vocabulary already resized)
    tokenizer/               the tokenizer with the task's special tokens
    llmft_state.json         data position, world size, ZeRO stage, config (rank 0)
    manifest_rank<R>.json    every file worker R wrote, with its size and a checksum; written last

Every worker uploads its own files, and neither Ray nor the storage keeps an order among them
(uploads run in threads, one worker may finish while another dies), so no single "last file"
can mark a folder complete. A checkpoint counts only when `llmft_state.json` is there, each of
its `world_size` manifests is, and every file a manifest lists is there with the listed size and
checksum. The check reads through a pyarrow filesystem: local disk and a bucket alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from llmft import storage
from llmft.config import Config
from llmft.errors import LlmftError
from llmft.files import write_text_atomic

STATE_FILE = "llmft_state.json"
DEEPSPEED_TAG = "deepspeed"
# A full checksum would read a whole checkpoint back (hundreds of GB for a 70B model, from a
# bucket at every resume); the first, middle and last MiB of each file catch a truncated, cut
# short or half-overwritten file at the cost of three ranged reads. Files up to 3 MiB are read whole.
CHECKSUM_SPAN = 1 << 20


def manifest_name(rank: int) -> str:
    return f"manifest_rank{rank}.json"


@dataclass
class Position:
    """Where a run is: optimizer steps done, and the next global batch to train (epoch, index)."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0


def save(engine, tokenizer, cfg: Config, position: Position, metrics: dict[str, Any], folder: Path, *,
         rank: int, world_size: int) -> None:
    """Write this worker's part of a checkpoint into `folder`, its manifest last."""
    engine.save_checkpoint(str(folder), tag=DEEPSPEED_TAG, save_latest=False)  # collective: every rank
    torch.save(_rng_states(), folder / f"rng_rank{rank}.pt")
    if rank == 0:
        engine.module.config.save_pretrained(folder / "model")
        tokenizer.save_pretrained(folder / "tokenizer")
        write_state(folder, cfg, position, metrics, world_size=world_size)
    write_manifest(folder, rank=rank, world_size=world_size)


def save_and_report(engine, tokenizer, cfg: Config, position: Position, metrics: dict[str, Any], *,
                    rank: int, world_size: int, upload: Callable | None = None) -> None:
    """Every worker saves its part to a local folder; Ray uploads each part into the checkpoint
    folder and registers the checkpoint once all uploads returned. `upload` replaces Ray's
    upload (`ray.train.report`'s `checkpoint_upload_fn`); only the fault-injection tests set it."""
    import ray.train

    folder = Path(tempfile.mkdtemp(prefix="llmft-checkpoint-"))
    try:
        save(engine, tokenizer, cfg, position, metrics, folder, rank=rank, world_size=world_size)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                         checkpoint_upload_fn=upload)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_state(folder: Path, cfg: Config, position: Position, metrics: dict[str, Any], *, world_size: int) -> None:
    """`llmft_state.json`: where the run is, and what a resume must match."""
    state = {"position": asdict(position), "world_size": world_size,
             "zero_stage": cfg.deepspeed.zero_stage, "model": cfg.model.name_or_path,
             "task": cfg.data.task, "metrics": metrics, "config": cfg.model_dump(mode="json")}
    write_text_atomic(folder / STATE_FILE, json.dumps(state, indent=2))


def write_manifest(folder: Path, *, rank: int, world_size: int) -> None:
    """List every file under `folder` (this worker's part) with its size and checksum."""
    import pyarrow.fs as pafs

    fs = pafs.LocalFileSystem()
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        files[path.relative_to(folder).as_posix()] = {"size": size, "crc32": checksum(fs, str(path), size)}
    write_text_atomic(folder / manifest_name(rank),
                      json.dumps({"rank": rank, "world_size": world_size, "files": files}, indent=1))


def checksum(fs, path: str, size: int) -> str:
    """CRC32 of the first, middle and last `CHECKSUM_SPAN` bytes (all of a small file)."""
    spans = [(0, size)] if size <= 3 * CHECKSUM_SPAN else \
        [(0, CHECKSUM_SPAN), (size // 2, CHECKSUM_SPAN), (size - CHECKSUM_SPAN, CHECKSUM_SPAN)]
    crc = 0
    with fs.open_input_file(path) as f:
        for offset, length in spans:
            crc = zlib.crc32(f.read_at(length, offset), crc)
    return f"{crc:08x}"


def needs_resharding(checkpoint, world_size: int) -> bool:
    """Whether `checkpoint` (a Ray Checkpoint or None) holds ZeRO-partitioned states of another
    world size: then it is loaded as a DeepSpeed universal checkpoint (see `restore`)."""
    if checkpoint is None:
        return False
    state = checkpoint_state(checkpoint)
    return state["world_size"] != world_size and state["zero_stage"] >= 1


def restore(engine, checkpoint, cfg: Config, *, world_size: int, rank: int) -> Position:
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
            _load_universal(engine, Path(folder), key=f"{checkpoint.path}@{world_size}", rank=rank)
        else:
            load_path, _ = engine.load_checkpoint(folder, tag=DEEPSPEED_TAG, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
            if load_path is None:
                raise LlmftError(f"Checkpoint {folder} has no DeepSpeed state under {DEEPSPEED_TAG}/.")
        rng_file = Path(folder) / f"rng_rank{rank}.pt"
        if rng_file.exists():  # a rank the saving run did not have keeps the seeded state
            _set_rng_states(torch.load(rng_file, weights_only=False))
    return Position(**state["position"])


def _load_universal(engine, folder: Path, *, key: str, rank: int) -> None:
    """DeepSpeed converts the checkpoint to its universal format (once per node, into node-local
    scratch, never into the checkpoint) and the engine loads it, re-partitioned for this world
    size. Two DeepSpeed 0.19 details are undone afterwards (see comments)."""
    import argparse

    import ray
    import torch.distributed as dist
    from deepspeed.checkpoint import ds_to_universal

    node = ray.get_runtime_context().get_node_id()
    scratch = Path(tempfile.gettempdir()) / f"llmft-universal-{node[:12]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    # The scratch is per Ray node, so the worker that fills it is chosen per Ray node too. Ray
    # Train's local rank would not do: it counts workers per node *IP* (ray.train.v2
    # WorkerGroup._assign_worker_ranks), and Ray nodes can share one IP (several raylets on a
    # host, host-network containers). A node whose workers all had local rank > 0 then found no
    # conversion, and DeepSpeed's load failed on an empty file list (`assert len(self.ckpt_list)
    # > 0` in deepspeed.runtime.state_dict_factory.SDLoaderBase.check_ckpt_list).
    node_ids: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(node_ids, node)
    converts = first_on_its_node(node_ids, rank)
    if converts:
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
    if converts:
        shutil.rmtree(scratch, ignore_errors=True)


def first_on_its_node(node_ids: list[str], rank: int) -> bool:
    """Whether `rank` is the lowest rank on its Ray node (`node_ids[r]` is rank r's node id)."""
    return node_ids.index(node_ids[rank]) == rank


def newest(ray_checkpoint, resume_path: str | None, run_dir: str):
    """The checkpoint to start from, the furthest along of: Ray's (after a restart), the one named
    by `--resume`, and the newest complete one in the run folder. After a restart Ray can hand
    back an older checkpoint than the last one every worker finished uploading (measured: after
    a node loss it gave step 2 when step 4 was complete in the bucket)."""
    import ray.train

    candidates = []  # (step, checkpoint)
    if ray_checkpoint is not None:
        try:
            candidates.append((checkpoint_state(ray_checkpoint)["position"]["global_step"], ray_checkpoint))
        except LlmftError as error:  # never start from a folder that does not check out, whoever names it
            print(f"llmft: not resuming from Ray's checkpoint: {error}", flush=True)
    for path in (resume_path, *find_checkpoints(run_dir)[-1:]):
        if path:
            checkpoint = ray.train.Checkpoint(path)
            candidates.append((checkpoint_state(checkpoint)["position"]["global_step"], checkpoint))
    return max(candidates, key=lambda item: item[0])[1] if candidates else None


def read_state(folder: str | os.PathLike) -> dict[str, Any]:
    """The state file of a complete checkpoint (a local folder or a storage URI); LlmftError otherwise."""
    fs, path = storage.resolve(folder)
    return _read_state(fs, path, storage.shown(str(folder)))


def checkpoint_state(checkpoint) -> dict[str, Any]:
    """`read_state` of a Ray Checkpoint, read where it lies (nothing else is downloaded)."""
    return _read_state(checkpoint.filesystem, checkpoint.path, checkpoint.path)


def _read_state(fs, path: str, shown: str) -> dict[str, Any]:
    state, found = _problems(fs, path, shown)
    if found:
        listed = "; ".join(found[:3]) + (f"; and {len(found) - 3} more" if len(found) > 3 else "")
        raise LlmftError(f"{shown} is not a complete llmft checkpoint: {listed}. Each worker uploads its own "
                         "files and lists them in a manifest written last, so this save was interrupted (or this "
                         "is another folder). Use an earlier checkpoint of the run.")
    return state


def problems(folder: str | os.PathLike) -> tuple[dict[str, Any] | None, list[str]]:
    """The checkpoint's state and what keeps it from being complete (nothing when it is)."""
    fs, path = storage.resolve(folder)
    return _problems(fs, path, storage.shown(str(folder)))


def _problems(fs, path: str, shown: str) -> tuple[dict[str, Any] | None, list[str]]:
    import pyarrow.fs as pafs

    root = path.rstrip("/")
    try:
        found = fs.get_file_info(path).type == pafs.FileType.Directory
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True)) if found else []
    except OSError as exc:
        raise LlmftError(f"Checkpoint {shown or path} cannot be read: {exc}") from None
    if not found:
        raise LlmftError(f"Checkpoint {shown or path} does not exist. Give a checkpoint folder, "
                         "e.g. outputs/<run>/checkpoint_<time>/ (`ls outputs/<run>` lists them).")
    sizes = {info.path[len(root) + 1:]: info.size for info in infos if info.type == pafs.FileType.File}
    if STATE_FILE not in sizes:
        return None, [f"{STATE_FILE} is missing"]
    try:
        state = _read_json(fs, f"{root}/{STATE_FILE}")
    except ValueError:
        return None, [f"{STATE_FILE} is corrupt (not valid JSON)"]
    missing = []
    for rank in range(int(state.get("world_size", 1))):
        name = manifest_name(rank)
        if name not in sizes:
            missing.append(f"{name} is missing")
            continue
        try:
            listed = _read_json(fs, f"{root}/{name}")["files"]
        except (ValueError, KeyError):
            missing.append(f"{name} is corrupt")
            continue
        for rel, entry in listed.items():
            if rel not in sizes:
                missing.append(f"{rel} is missing")
            elif sizes[rel] != entry["size"]:
                missing.append(f"{rel} has {sizes[rel]} bytes, its manifest says {entry['size']}")
            elif checksum(fs, f"{root}/{rel}", sizes[rel]) != entry["crc32"]:
                missing.append(f"{rel} does not match its manifest's checksum")
    return state, missing


def _read_json(fs, path: str) -> dict[str, Any]:
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read())


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
