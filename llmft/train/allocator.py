"""glibc malloc settings for training workers on CPUs.

By default glibc serves every allocation above a threshold (at most 32 MB, adjusted as it goes)
with its own mmap and unmaps it when freed, so a step's large temporaries (ZeRO's flattened
partitions and gathered parameters, the optimizer's full-size temporaries, an embedding's dense
gradient) come back as fresh pages every step, each page faulted in and zeroed by the kernel.
With these settings they stay in the heap and are reused. Measured in one process on 2 cores
(SmolLM2-135M, 4 x 256-token rows per step, fp32): the ZeRO-3 optimizer step took 0.46 s
instead of 1.04 s and the whole step 8.0 s instead of 8.9 s; at ZeRO stage 0 the optimizer step
took 0.25 s instead of 0.37 s. Losses are unchanged: only where memory comes from changes.

glibc reads these when a process starts, so they go into the workers' environment (Ray starts
them with it). A value the user set in the driver's environment wins. GPU workers keep glibc's
defaults: their large tensors live on the GPU.
"""

from __future__ import annotations

import os

CPU_WORKER_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),  # allocations up to 1 GiB come from the heap
    "MALLOC_TRIM_THRESHOLD_": str(4 << 30),  # freed heap memory is kept for the next step
    "MALLOC_TOP_PAD_": str(512 << 20),       # the heap grows in large steps
}


def cpu_worker_malloc() -> dict[str, str]:
    """The settings for a CPU worker's environment, with the driver's own values where it has them."""
    return {name: os.environ.get(name, value) for name, value in CPU_WORKER_MALLOC.items()}


def malloc_settings_here() -> dict[str, str | None]:
    """What this process runs with (written to the run's engine.json by rank 0)."""
    return {name: os.environ.get(name) for name in CPU_WORKER_MALLOC}
