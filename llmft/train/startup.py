"""Where the time before the first optimizer step goes: wall-clock marks taken by the driver and
by each worker, turned into named phases that rank 0 writes with its first step's metrics
(`startup_seconds` in metrics.jsonl), with the worker's anonymous resident memory after each of
its phases and its peak during the first step (`startup_memory_gib`).

All processes of a run share one clock on one machine; across machines the phases that span the
driver and a worker (`worker_group`) are only as exact as the machines' clocks agree.
"""

from __future__ import annotations

import contextlib
import sys
import time

# (phase, mark it starts at, mark it ends at), in order. A phase whose marks are missing is left out.
PHASES = (
    ("command", "process_started", "launched"),            # Python start-up and the CLI's imports
    ("driver_and_data", "launched", "data_ready"),          # CLI imports, config, tokenisation (or cache hit)
    ("ray_start", "data_ready", "ray_ready"),               # ray.init of an embedded cluster, or connecting
    ("trainer_setup", "ray_ready", "fit_called"),           # data into the object store, TorchTrainer
    ("worker_group", "fit_called", "worker_started"),       # Ray Train's controller, helper actors, worker processes
    ("worker_setup", "worker_started", "loop_entered"),     # Ray and torch imports in the worker, process group
    ("imports", "loop_entered", "imports_done"),            # DeepSpeed, transformers
    ("distributed_init", "imports_done", "distributed_ready"),  # DeepSpeed's communication backend
    ("data_shipping", "distributed_ready", "data_ready_in_worker"),  # object store -> worker, epoch plans
    ("model_load", "data_ready_in_worker", "model_loaded"),  # tokenizer, from_pretrained (partitioned under ZeRO-3)
    ("deepspeed_initialize", "model_loaded", "engine_ready"),
    ("resume", "engine_ready", "resumed"),                  # checkpoint restore, metrics file
    ("first_step", "resumed", "first_step_done"),
)


def process_started() -> float:
    """When this process started (seconds since the epoch)."""
    import psutil

    return psutil.Process().create_time()


def mark(timeline: dict[str, float], name: str, memory: dict[str, float] | None = None) -> None:
    """Record the time of `name`; with `memory`, also this process's resident anonymous memory (GiB)."""
    timeline[name] = time.time()
    if memory is not None:
        release_freed_heap()
        memory[name] = resident_gib()["RssAnon"]


def release_freed_heap() -> None:
    """glibc keeps freed heap pages (a step's activations, a loader's buffers) resident; give them
    back so that RssAnon counts memory in use. No-op where there is no glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def resident_gib() -> dict[str, float]:
    """This process's resident memory from /proc/self/status in GiB: RssAnon (memory the process
    owns: heap, tensors) and VmHWM (the kernel's peak of all resident pages, files included)."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0]) / 2**20
    return values


def memory_phases(memory: dict[str, float], peak_gib: float) -> dict[str, float]:
    """Growth of the worker's anonymous memory per phase (GiB), and its peak in the first step."""
    names = [end for _, _, end in PHASES if end in memory]
    out = {"after_imports": round(memory.get("imports_done", 0.0), 3)}
    for before, after in zip(names, names[1:]):
        phase = next(name for name, _, end in PHASES if end == after)
        out[phase] = round(memory[after] - memory[before], 3)
    out["first_step_peak"] = round(peak_gib, 3)
    return out


def phases(timeline: dict[str, float]) -> dict[str, float]:
    """Seconds per phase, plus `total`: start of the driver process to the end of the first step
    (for `llmft train`, the command's whole start-up)."""
    out = {name: round(timeline[end] - timeline[start], 3) for name, start, end in PHASES
           if start in timeline and end in timeline}
    if "process_started" in timeline and "first_step_done" in timeline:
        out["total"] = round(timeline["first_step_done"] - timeline["process_started"], 3)
    return out


@contextlib.contextmanager
def without_unused_mlflow(cfg):
    """Import DeepSpeed without MLflow when the run does not log to MLflow.

    DeepSpeed's autotuner imports MLflow at import time whenever it is installed (several seconds
    of CPU per worker process on 2 cores) and training never uses it. `None` in `sys.modules`
    makes `import mlflow` fail fast inside the block; the entry is removed afterwards.
    """
    if cfg.logging.mlflow_tracking_uri or "mlflow" in sys.modules:
        yield
        return
    sys.modules["mlflow"] = None
    try:
        yield
    finally:
        if "mlflow" in sys.modules and sys.modules["mlflow"] is None:
            del sys.modules["mlflow"]
