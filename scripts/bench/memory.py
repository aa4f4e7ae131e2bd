"""Memory: peak resident memory per worker for SmolLM2-135M, 1 worker against 2, under ZeRO-3.

    python scripts/bench/memory.py [--steps 3] [--stage 3]

Runs a few training steps of the demo config (fp32, torch AdamW) with 1 and with 2 Ray workers
and polls every worker process from outside (/proc/<pid>/status): VmHWM, the kernel's peak of
resident memory, and the largest RssAnon seen (anonymous memory only: without the mapped
safetensors file and Ray's shared-memory object store, so closer to what the worker owns).
Model states in fp32 with AdamW are 16 bytes per parameter (weights 4, gradients 4, Adam's
two moments 8); ZeRO-3 should leave each of 2 workers about half of that, so the per-worker
peak should drop by about a quarter of the total states or more.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

BYTES_PER_PARAM = 16  # fp32 weights + fp32 gradients + AdamW exp_avg + exp_avg_sq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--stage", type=int, default=3)
    args = parser.parse_args()
    started_load = common.machine_info()["load_average"]

    model = common.smollm2()
    params = count_parameters(model)
    states = params * BYTES_PER_PARAM
    base = [f"model.name_or_path={model}", "data.valid=null", f"training.max_steps={args.steps}",
            "training.micro_batch_size=2", "training.global_batch_size=4", f"deepspeed.zero_stage={args.stage}",
            "scaling.cpus_per_worker=1"]
    arms, rows = {}, []
    for workers in (1, 2):
        print(f"{workers} worker(s), ZeRO-{args.stage}", flush=True)
        run = common.train_with_llmft(common.SMOLLM2_CONFIG, [*base, f"scaling.num_workers={workers}"],
                                      label=f"memory-{workers}w")
        if len(run.peak_rss_bytes) != workers:
            raise RuntimeError(f"expected {workers} worker processes, saw {len(run.peak_rss_bytes)}; log {run.log_path}")
        hwm = [v / common.GIB for v in run.peak_rss_bytes.values()]
        anon = [v / common.GIB for v in run.peak_anon_bytes.values()]
        arms[f"{workers}_workers"] = {"peak_rss_gib": hwm, "peak_anon_gib": anon, "max_peak_rss_gib": max(hwm),
                                      "max_peak_anon_gib": max(anon), "model_states_per_worker_gib": states / workers / common.GIB,
                                      "log": run.log_path}
        rows.append([f"{workers} worker(s)", ", ".join(f"{v:.2f}" for v in hwm), ", ".join(f"{v:.2f}" for v in anon),
                     f"{states / workers / common.GIB:.2f}"])
    drop_hwm = arms["1_workers"]["max_peak_rss_gib"] - arms["2_workers"]["max_peak_rss_gib"]
    drop_anon = arms["1_workers"]["max_peak_anon_gib"] - arms["2_workers"]["max_peak_anon_gib"]
    expected_drop = states / 2 / common.GIB
    print()
    common.print_table(["workers", "peak RSS (VmHWM) GiB", "peak anon GiB", "model states/worker GiB"], rows)
    print(f"  per-worker peak drops by {drop_hwm:.2f} GiB (RSS), {drop_anon:.2f} GiB (anon); "
          f"half the model states is {expected_drop:.2f} GiB")
    summary = [
        common.summary_row(f"peak RSS per worker, 1 worker (SmolLM2-135M, ZeRO-{args.stage}, fp32)",
                           f"{arms['1_workers']['max_peak_rss_gib']:.2f} GiB"),
        common.summary_row(f"peak RSS per worker, 2 workers (SmolLM2-135M, ZeRO-{args.stage}, fp32)",
                           f"{arms['2_workers']['max_peak_rss_gib']:.2f} GiB"),
        common.summary_row("drop of the per-worker peak (anonymous memory) from 1 to 2 workers",
                           f"{drop_anon:.2f} GiB", f"~{expected_drop:.2f} GiB (half the model states)",
                           drop_anon >= 0.5 * expected_drop),
    ]
    path = common.write_result("memory", {
        "setup": {"model": str(model), "parameters": params, "model_states_gib": states / common.GIB,
                  "bytes_per_parameter": BYTES_PER_PARAM, "steps": args.steps, "zero_stage": args.stage,
                  "measured": "outside the workers, /proc/<pid>/status polled every 0.25 s"},
        "arms": arms, "drop_rss_gib": drop_hwm, "drop_anon_gib": drop_anon, "expected_drop_gib": expected_drop,
        "summary": summary}, started_load=started_load)
    print(f"\nsaved {path}")


def count_parameters(model_dir: Path) -> int:
    """Parameters of the model, from its safetensors header (no weights loaded)."""
    import struct

    total = 0
    for file in model_dir.glob("*.safetensors"):
        with file.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= dim
                total += count
    return total


if __name__ == "__main__":
    main()
