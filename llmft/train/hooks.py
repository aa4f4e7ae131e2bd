"""Test-only switches for fault injection and tracing. Off unless their LLMFT_* variable is set
(the workers inherit LLMFT_* variables); nothing in a normal run depends on them.

Faults. Each happens once: `LLMFT_FAULT_MARKER` names a file that gets one line per fault that
happened (`kill 5:1`, `pause 5:1`, `save 4`), so a restarted worker carries on past it.
- `LLMFT_FAULT_KILL_AT_STEP=N` (worker `LLMFT_FAULT_RANK`, default 1) or `=N:R[,N:R...]`:
  worker R dies (`os._exit`) during optimizer step N, after its first micro-batch. Exercises
  Ray's failure recovery and `--resume`.
- `LLMFT_FAULT_PAUSE_AT_STEP=N`: worker `LLMFT_FAULT_RANK` stops during step N, so a test can
  take its node down at a known point.
- `LLMFT_FAULT_SAVE=N:PHASE`: the checkpoint save after step N is cut short as a crash at PHASE
  would leave it, then every worker dies. The cut happens in the upload step Ray Train offers
  for this (`ray.train.report(checkpoint_upload_fn=...)`), so the partial files land exactly
  where Ray would have put the whole checkpoint:
    `before_shards`    each worker uploads its files except DeepSpeed's shards and its manifest
    `between_ranks`    rank 0 uploads all of its files, the other ranks nothing
    `before_manifest`  every worker uploads everything except the last rank's manifest
    `truncated_shard`  every worker uploads everything, the last rank's optimizer shard cut to half

Traces, with `LLMFT_TRACE_DIR=DIR`:
- `DIR/examples_rank<R>.jsonl`: one record per micro-batch the model actually ran in training,
  taken after the forward pass from the `input_ids` tensor the model received (a hash), with its
  rows (the example ids packed into each sequence), the step, epoch and an id of this worker
  process (`attempt`). Only ever appended, so the records of a crashed attempt stay.
- `DIR/workers.jsonl`: each worker's rank, world size and Ray node, at every start.
- `DIR/final_logits.pt` (rank 0): the final model's logits on a fixed input.
- With `LLMFT_TRACE_STATES=1`, rank 0 saves every parameter's full fp32 master weight and Adam
  moments, the optimizer steps and the param groups' settings after each checkpoint save and
  each restore, to `DIR/states_<event>_step<N>_ws<W>.pt`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path

import torch

SAVE_FAULT_PHASES = ("before_shards", "between_ranks", "before_manifest", "truncated_shard")


class TraceAndFaultHooks:
    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        self.marker = os.environ.get("LLMFT_FAULT_MARKER")
        default_rank = os.environ.get("LLMFT_FAULT_RANK", "1")
        self.kills = {int(step): int(r or default_rank) for step, r in _pairs(os.environ.get("LLMFT_FAULT_KILL_AT_STEP"))}
        pause = os.environ.get("LLMFT_FAULT_PAUSE_AT_STEP")
        self.pause = (int(pause), int(default_rank)) if pause else None
        self.save_fault = {int(step): phase for step, phase in _pairs(os.environ.get("LLMFT_FAULT_SAVE"))}
        if (self.kills or self.pause or self.save_fault) and not self.marker:
            raise ValueError("LLMFT_FAULT_* switches need LLMFT_FAULT_MARKER (a file recording the faults that happened)")
        for phase in self.save_fault.values():
            if phase not in SAVE_FAULT_PHASES:
                raise ValueError(f"LLMFT_FAULT_SAVE phase {phase!r} is not one of {SAVE_FAULT_PHASES}")
        self.trace_dir = os.environ.get("LLMFT_TRACE_DIR")
        self.trace_states = bool(self.trace_dir) and os.environ.get("LLMFT_TRACE_STATES") == "1"
        self.attempt = uuid.uuid4().hex[:12]
        self._pending: dict | None = None
        if self.trace_dir:
            import ray

            with open(os.path.join(self.trace_dir, "workers.jsonl"), "a") as f:
                f.write(json.dumps({"rank": rank, "world_size": world_size, "pid": os.getpid(),
                                    "node_id": ray.get_runtime_context().get_node_id()}) + "\n")

    # ------------------------------------------------------------------ faults during a step
    def maybe_crash(self, step: int) -> None:
        if self.kills.get(step) == self.rank and self._first_time(f"kill {step}:{self.rank}"):
            os._exit(1)
        if self.pause == (step, self.rank) and self._first_time(f"pause {step}:{self.rank}"):
            while True:  # until the test takes this node down
                time.sleep(1)

    # ------------------------------------------------------------------ a save cut short
    def checkpoint_upload(self, step: int):
        """Ray's `checkpoint_upload_fn` for the save after `step`: None (Ray's own upload) unless
        a save fault is set for this step and has not happened yet."""
        phase = self.save_fault.get(step)
        if phase is None or f"save {step}" in self._happened():
            return None

        def cut_short(checkpoint, checkpoint_dir_name: str):
            import pyarrow.fs as pafs
            import ray.train
            import torch.distributed as dist

            storage = ray.train.get_context().get_storage()
            fs, dest = storage.storage_filesystem, storage.build_checkpoint_path_from_name(checkpoint_dir_name)
            local = Path(checkpoint.path)
            last = self.rank == self.world_size - 1
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                name = path.relative_to(local).as_posix()
                if not uploaded_before_crash(phase, name, self.rank, last):
                    continue
                target = f"{dest}/{name}"
                fs.create_dir(os.path.dirname(target))
                if phase == "truncated_shard" and last and name.endswith("optim_states.pt"):
                    with fs.open_output_stream(target) as out:
                        out.write(path.read_bytes()[:path.stat().st_size // 2])
                else:
                    pafs.copy_files(str(path), target, destination_filesystem=fs)
            dist.barrier()  # every worker's part is in place before any of them dies
            if self.rank == 0:
                self._first_time(f"save {step}")
            dist.barrier()
            os._exit(1)

        return cut_short

    # ------------------------------------------------------------------ what the model consumed
    def watch(self, model: torch.nn.Module) -> None:
        """Record, after each training forward pass, what the model received."""
        if self.trace_dir:
            model.register_forward_hook(self._after_forward, with_kwargs=True)

    def feeding(self, step: int, epoch: int, micro: int, rows) -> None:
        """The loop is about to run training micro-batch `micro` of `step` with these rows."""
        if self.trace_dir:
            self._pending = {"step": step, "epoch": epoch, "micro": micro, "rows": [list(row) for row in rows]}

    def _after_forward(self, module, args, kwargs, output) -> None:
        if self._pending is None or not module.training:
            return
        input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        record = {"attempt": self.attempt, "rank": self.rank, **self._pending,
                  "input_ids_sha1": input_ids_hash(input_ids)}
        self._pending = None
        with open(os.path.join(self.trace_dir, f"examples_rank{self.rank}.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")

    def record_states(self, engine, event: str, step: int) -> None:
        if not self.trace_states or step == 0:
            return
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        params = {}
        for name, param in engine.module.named_parameters():  # every rank: ZeRO-3 gathers collectively
            params[name] = {"fp32": safe_get_full_fp32_param(param).cpu().clone(),
                            **{key: safe_get_full_optimizer_state(param, key).cpu().clone()
                               for key in ("exp_avg", "exp_avg_sq")}}
        if self.rank == 0:
            optimizer = engine.optimizer
            steps = [float(s["step"]) for s in optimizer.state.values() if "step" in s]
            groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
            torch.save({"params": params, "steps": steps, "groups": groups},
                       os.path.join(self.trace_dir, f"states_{event}_step{step}_ws{self.world_size}.pt"))

    def record_final_logits(self, engine, data, device: torch.device) -> None:
        if not self.trace_dir:
            return
        input_ids = torch.from_numpy(data.example(0)[0].astype("int64"))[None].to(device)
        engine.eval()
        with torch.no_grad():  # every rank runs it: ZeRO-3 gathers parameters collectively
            logits = engine(input_ids=input_ids, use_cache=False).logits
        if self.rank == 0:
            torch.save({"input_ids": input_ids.cpu(), "logits": logits.float().cpu()},
                       os.path.join(self.trace_dir, "final_logits.pt"))

    # ------------------------------------------------------------------ the marker file
    def _happened(self) -> set[str]:
        try:
            return set(Path(self.marker).read_text().splitlines())
        except FileNotFoundError:
            return set()

    def _first_time(self, fault: str) -> bool:
        """Record `fault` in the marker file; False if it had happened already."""
        if fault in self._happened():
            return False
        with open(self.marker, "a") as f:
            f.write(fault + "\n")
        return True


def input_ids_hash(input_ids: torch.Tensor) -> str:
    """SHA-1 of a batch of token ids (shape and values)."""
    ids = input_ids.detach().to("cpu", torch.int64).contiguous()
    return hashlib.sha1(str(tuple(ids.shape)).encode() + ids.numpy().tobytes()).hexdigest()


def uploaded_before_crash(phase: str, name: str, rank: int, last: bool) -> bool:
    """Whether worker `rank`'s file `name` is in storage when a save is cut short at `phase`."""
    manifest = name.startswith("manifest_rank")
    if phase == "before_shards":
        return not manifest and not name.startswith("deepspeed/")
    if phase == "between_ranks":
        return rank == 0
    if phase == "before_manifest":
        return not (manifest and last)
    return True  # truncated_shard


def _pairs(text: str | None) -> list[tuple[str, str]]:
    """`5:1,9:0` -> [("5", "1"), ("9", "0")]; `5` -> [("5", "")]."""
    return [tuple((item.strip() + ":").split(":")[:2]) for item in (text or "").split(",") if item.strip()]
