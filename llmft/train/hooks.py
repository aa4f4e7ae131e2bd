"""Test-only switches for fault injection and tracing. Off unless their LLMFT_* variable is set;
the training loop calls them at three points and nothing else depends on them."""

from __future__ import annotations

import json
import os

import torch


class TraceAndFaultHooks:
    """Test-only switches, read from the environment (the workers inherit LLMFT_* variables).

    - `LLMFT_FAULT_KILL_AT_STEP=N`: worker `LLMFT_FAULT_RANK` (default 1) dies during step N,
      once: `LLMFT_FAULT_MARKER` names a file that records the kill, so the restarted worker
      carries on. Exercises Ray's failure recovery and `--resume`.
    - `LLMFT_TRACE_DIR=DIR`: each worker appends the examples of every step to
      `DIR/examples_rank<R>.jsonl`, and rank 0 saves the final model's logits on a fixed input
      to `DIR/final_logits.pt` (to check exactly-once data after a restore, and the export).
    """

    def __init__(self, rank: int):
        self.rank = rank
        step = os.environ.get("LLMFT_FAULT_KILL_AT_STEP")
        self.kill_step = int(step) if step else None
        self.marker = os.environ.get("LLMFT_FAULT_MARKER")
        self.kill_armed = bool(step and self.marker) and rank == int(os.environ.get("LLMFT_FAULT_RANK", "1"))
        self.trace_dir = os.environ.get("LLMFT_TRACE_DIR")

    def maybe_crash(self, step: int) -> None:
        if self.kill_armed and step == self.kill_step and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(step))
            os._exit(1)

    def record_examples(self, step: int, epoch: int, micro_batches) -> None:
        if self.trace_dir:
            examples = [i for rows in micro_batches for row in rows for i in row]
            with open(os.path.join(self.trace_dir, f"examples_rank{self.rank}.jsonl"), "a") as f:
                f.write(json.dumps({"step": step, "epoch": epoch, "examples": examples}) + "\n")

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
