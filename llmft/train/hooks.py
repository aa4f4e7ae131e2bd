"""Test-only switches for fault injection and tracing. Off unless their LLMFT_* variable is set;
the training loop calls them at three points and nothing else depends on them."""

from __future__ import annotations

import json
import os
import time

import torch


class TraceAndFaultHooks:
    """Test-only switches, read from the environment (the workers inherit LLMFT_* variables).

    - `LLMFT_FAULT_KILL_AT_STEP=N`: worker `LLMFT_FAULT_RANK` (default 1) dies during step N,
      once: `LLMFT_FAULT_MARKER` names a file that records the kill, so the restarted worker
      carries on. Exercises Ray's failure recovery and `--resume`.
    - `LLMFT_FAULT_PAUSE_AT_STEP=N`: worker `LLMFT_FAULT_RANK` writes `LLMFT_FAULT_MARKER` and
      stops during step N, once, so a test can take its node down at a known point.
    - `LLMFT_TRACE_DIR=DIR`: each worker appends the examples of every step to
      `DIR/examples_rank<R>.jsonl` and, at every start, its rank, world size and Ray node to
      `DIR/workers.jsonl`; rank 0 saves the final model's logits on a fixed input to
      `DIR/final_logits.pt` (to check exactly-once data after a restore, and the export).
    - `LLMFT_TRACE_STATES=1` (with `LLMFT_TRACE_DIR`): rank 0 saves every parameter's full fp32
      master weight and Adam moments, the optimizer steps and the param groups' settings after
      each checkpoint save and each restore, to `DIR/states_<event>_step<N>_ws<W>.pt`.
    """

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        step = os.environ.get("LLMFT_FAULT_KILL_AT_STEP")
        self.kill_step = int(step) if step else None
        self.marker = os.environ.get("LLMFT_FAULT_MARKER")
        self.kill_armed = bool(step and self.marker) and rank == int(os.environ.get("LLMFT_FAULT_RANK", "1"))
        pause = os.environ.get("LLMFT_FAULT_PAUSE_AT_STEP")
        self.pause_step = int(pause) if pause else None
        self.pause_armed = bool(pause and self.marker) and rank == int(os.environ.get("LLMFT_FAULT_RANK", "1"))
        self.trace_dir = os.environ.get("LLMFT_TRACE_DIR")
        self.trace_states = bool(self.trace_dir) and os.environ.get("LLMFT_TRACE_STATES") == "1"
        if self.trace_dir:
            import ray

            with open(os.path.join(self.trace_dir, "workers.jsonl"), "a") as f:
                f.write(json.dumps({"rank": rank, "world_size": world_size, "pid": os.getpid(),
                                    "node_id": ray.get_runtime_context().get_node_id()}) + "\n")

    def maybe_crash(self, step: int) -> None:
        if self.kill_armed and step == self.kill_step and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(step))
            os._exit(1)
        if self.pause_armed and step == self.pause_step and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(step))
            while True:  # until the test takes this node down
                time.sleep(1)

    def record_examples(self, step: int, epoch: int, micro_batches) -> None:
        if self.trace_dir:
            examples = [i for rows in micro_batches for row in rows for i in row]
            with open(os.path.join(self.trace_dir, f"examples_rank{self.rank}.jsonl"), "a") as f:
                f.write(json.dumps({"step": step, "epoch": epoch, "examples": examples}) + "\n")

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
        input_ids = torch.tensor([data.input_ids[0]], device=device)
        engine.eval()
        with torch.no_grad():  # every rank runs it: ZeRO-3 gathers parameters collectively
            logits = engine(input_ids=input_ids, use_cache=False).logits
        if self.rank == 0:
            torch.save({"input_ids": input_ids.cpu(), "logits": logits.float().cpu()},
                       os.path.join(self.trace_dir, "final_logits.pt"))
