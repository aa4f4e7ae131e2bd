"""`llmft doctor [CONFIG]`: what this node has for training, like DeepSpeed's `ds_report`.

Reports the software (torch, CUDA, NCCL, transformers, DeepSpeed and its accelerator, Ray,
FlashAttention-2), the hardware (CPUs, free RAM, /dev/shm, each GPU with its free memory and bf16
support), DeepSpeed's ops (prebuilt in the wheel, compiled in the JIT cache, or compiled at first
use) and whether the Ray cluster named by `--address`/RAY_ADDRESS answers. With a CONFIG it also
says what that config needs from this node: GPUs, NCCL, bf16, FlashAttention-2, CPU Adam for
offload, and `llmft plan`'s per-GPU and offload memory against what is here. Exit status 1 with
the list of what is missing, else 0.

`--build-ops` compiles the DeepSpeed ops llmft uses on this accelerator into the JIT cache first
(`scripts/install.sh` runs it), so no training run pays for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from llmft.config import Config
from llmft.errors import LlmftError

GB = 2**30
Status = Literal["ok", "warn", "missing", "info"]
# DeepSpeed builders llmft can use: CPU Adam steps offloaded optimizer states, fused Adam is
# DeepSpeed's GPU Adam. (Its shm comm op serves only tensor-parallel inference; workers skip it.)
OPS = {"cpu_adam": "CPUAdamBuilder", "fused_adam": "FusedAdamBuilder"}
BUILT_ON_CPU = ("cpu_adam",)
BUILT_ON_GPU = ("cpu_adam", "fused_adam")


@dataclass
class Check:
    section: str
    name: str
    status: Status
    detail: str
    needed_by_config: bool = False


# ---------------------------------------------------------------- facts about the node


def software() -> list[Check]:
    import deepspeed
    import ray
    import torch
    import transformers
    from deepspeed.accelerator import get_accelerator

    cuda = torch.version.cuda
    checks = [
        Check("software", "torch", "ok", f"{torch.__version__} ({'CUDA ' + cuda if cuda else 'CPU-only build'})"),
        Check("software", "CUDA", "ok" if torch.cuda.is_available() else "info",
              f"runtime {cuda}, driver sees {torch.cuda.device_count()} GPU(s)" if cuda
              else "none: this torch is a CPU build"),
        Check("software", "NCCL", *_nccl()),
        Check("software", "transformers", "ok", transformers.__version__),
        Check("software", "deepspeed", "ok", f"{deepspeed.__version__}, accelerator {get_accelerator()._name}, "
              f"communication backend {get_accelerator().communication_backend_name()}"),
        Check("software", "ray", "ok", ray.__version__),
        Check("software", "flash-attention 2", *_flash_attention()),
    ]
    return checks


def _nccl() -> tuple[Status, str]:
    import torch

    if not torch.cuda.is_available():
        return "info", "not available (no CUDA device): workers use gloo"
    try:
        version = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError) as exc:
        return "missing", f"torch has no NCCL: {exc}"
    return "ok", ".".join(str(part) for part in version) if isinstance(version, tuple) else str(version)


def _flash_attention() -> tuple[Status, str]:
    from importlib import metadata

    from transformers.utils import is_flash_attn_2_available

    try:
        version = metadata.version("flash-attn")
    except metadata.PackageNotFoundError:
        return "info", "not installed (`pip install flash-attn` on a CUDA node; only attn_implementation: flash_attention_2 needs it)"
    if is_flash_attn_2_available():
        return "ok", f"flash-attn {version}, usable by transformers"
    return "warn", f"flash-attn {version} installed but transformers cannot use it here (needs a CUDA GPU it supports)"


def hardware() -> list[Check]:
    import psutil
    import torch

    memory = psutil.virtual_memory()
    checks = [
        Check("hardware", "CPUs", "ok", f"{os.cpu_count()} logical"),
        Check("hardware", "RAM", "ok", f"{memory.available / GB:.1f} GB free of {memory.total / GB:.1f} GB"),
    ]
    try:
        shm = os.statvfs("/dev/shm")
        size = shm.f_frsize * shm.f_blocks / GB
        checks.append(Check("hardware", "/dev/shm", "ok" if size >= 0.5 else "warn",
                            f"{size:.1f} GB" + ("" if size >= 0.5 else ": NCCL and DeepSpeed's shm comm need more "
                                               "(docker: --shm-size=16g)")))
    except OSError:
        pass
    if not torch.cuda.is_available():
        checks.append(Check("hardware", "GPUs", "info", "none visible"))
    for index, gpu in enumerate(gpus()):
        checks.append(Check("hardware", f"GPU {index}", "ok",
                            f"{gpu['name']}, {gpu['free_gb']:.1f} GB free of {gpu['total_gb']:.1f} GB, "
                            f"compute capability {gpu['capability']}, bf16 {'yes' if gpu['bf16'] else 'no'}"))
    return checks


def gpus() -> list[dict[str, Any]]:
    import torch

    found = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        free, total = torch.cuda.mem_get_info(index)
        major, minor = torch.cuda.get_device_capability(index)
        found.append({"name": torch.cuda.get_device_name(index), "free_gb": free / GB, "total_gb": total / GB,
                      "capability": f"{major}.{minor}", "bf16": major >= 8})  # bf16 tensor cores: Ampere on
    return found


def deepspeed_ops() -> list[Check]:
    """Each op: prebuilt into the DeepSpeed wheel, compiled in the JIT cache, or compiled at first use."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops
    from torch.utils.cpp_extension import is_ninja_available

    import torch

    checks = []
    for name in BUILT_ON_GPU if torch.cuda.is_available() else BUILT_ON_CPU:
        builder = get_accelerator().create_op_builder(OPS[name])
        if builder is None:
            continue
        label = f"DeepSpeed op {name}"
        if installed_ops.get(name):
            checks.append(Check("deepspeed ops", label, "ok", "prebuilt into the installed DeepSpeed"))
        elif jit_cached(builder.name):
            checks.append(Check("deepspeed ops", label, "ok", f"compiled in the JIT cache ({jit_dir(builder.name)})"))
        elif builder.is_compatible(verbose=False) and is_ninja_available():
            checks.append(Check("deepspeed ops", label, "warn", "not built yet: compiled on first use (CPU Adam "
                                "took 75 s on 2 cores), or now by `llmft doctor --build-ops`"))
        else:
            why = "ninja is missing" if not is_ninja_available() else "its compiler or library requirements are not met"
            checks.append(Check("deepspeed ops", label, "missing", f"cannot be built here: {why}"))
    return checks


def jit_dir(name: str) -> Path:
    # torch's own rule for where `cpp_extension.load(name=...)` builds (TORCH_EXTENSIONS_DIR aware).
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


def jit_cached(name: str) -> bool:
    return (jit_dir(name) / f"{name}.so").is_file()


def build_ops() -> list[tuple[str, float]]:
    """Compile the ops llmft uses on this accelerator into the JIT cache; seconds per op."""
    import torch
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops

    built = []
    for name in BUILT_ON_GPU if torch.cuda.is_available() else BUILT_ON_CPU:
        builder = get_accelerator().create_op_builder(OPS[name])
        if builder is None or installed_ops.get(name) or not builder.is_compatible(verbose=False):
            continue
        started = time.perf_counter()
        builder.load(verbose=False)
        built.append((name, time.perf_counter() - started))
    return built


def ray_cluster(address: str | None) -> Check:
    """Whether the named Ray cluster answers (a TCP connect, so a dead address fails in seconds)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        return Check("ray", "cluster", "ok", "none named (--address/RAY_ADDRESS): `llmft train` starts an embedded "
                     "Ray on 127.0.0.1")
    target = address
    if address == "auto":
        current = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        if not current.is_file():
            return Check("ray", "cluster", "missing", f"RAY_ADDRESS=auto but {current} names no running cluster")
        target = current.read_text().strip()
    parsed = urlparse(target if "://" in target else f"tcp://{target}")
    host, port = parsed.hostname, parsed.port or (8265 if parsed.scheme.startswith("http") else 6379)
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as exc:
        return Check("ray", "cluster", "missing", f"{address} ({host}:{port}) does not answer: {exc}")
    return Check("ray", "cluster", "ok", f"{address} answers on {host}:{port}")


# ---------------------------------------------------------------- what a config needs


def config_needs(cfg: Config, found: list[Check], node_gpus: list[dict[str, Any]]) -> list[Check]:
    """What `cfg` needs from this node, checked against what was found."""
    from llmft.memory import estimate
    from llmft.models.architecture import load_model_config
    from llmft.train.deepspeed import training_dtype

    status = {check.name: check.status for check in found}
    needs: list[Check] = []

    def need(name: str, ok: bool, detail: str) -> None:
        needs.append(Check("config", name, "ok" if ok else "missing", detail, needed_by_config=True))

    use_gpu, dtype = cfg.scaling.use_gpu, training_dtype(cfg)
    if use_gpu:
        need("GPUs", bool(node_gpus), f"{len(node_gpus)} here; the config runs {cfg.scaling.num_workers} workers with a "
             "GPU each across the cluster")
        need("NCCL", status.get("NCCL") == "ok", "GPU workers communicate over NCCL")
        if dtype == "bfloat16":
            need("bf16 GPUs", bool(node_gpus) and all(gpu["bf16"] for gpu in node_gpus),
                 "model.dtype bfloat16 needs compute capability 8.0 or higher (A10G, A100, H100, L4)")
    elif dtype == "bfloat16":
        needs.append(Check("config", "bf16 on CPU", "warn", "bfloat16 has no fast path on most CPUs (a step ran "
                           "35-40x slower than fp32 here): fine for `--smoke`, slow for training", True))
    if cfg.model.attn_implementation == "flash_attention_2":
        need("flash-attention 2", status.get("flash-attention 2") == "ok", "model.attn_implementation: flash_attention_2")
    if cfg.deepspeed.offload_optimizer != "none":
        need("CPU Adam", status.get("DeepSpeed op cpu_adam") in ("ok", "warn"),
             f"deepspeed.offload_optimizer: {cfg.deepspeed.offload_optimizer} steps the optimizer with DeepSpeed's CPU Adam")

    model_config, origin = load_model_config(cfg.model.name_or_path, cfg.model.trust_remote_code)
    memory = min((gpu["total_gb"] for gpu in node_gpus), default=None)
    plan = estimate(model_config, cfg, gpu_memory_gb=memory or 24.0, gpus_per_node=len(node_gpus) or None)
    per_gpu = plan["gpu_total_gb"]
    if use_gpu and node_gpus:
        need("GPU memory", plan["fits"], f"`llmft plan` needs {per_gpu:.1f} GB per GPU; the smallest GPU here has {memory:.1f} GB")
    else:
        needs.append(Check("config", "GPU memory", "info", f"`llmft plan` needs {per_gpu:.1f} GB per GPU "
                           f"({plan['model']['parameters'] / 1e9:.2f}B parameters, config from {origin}); no GPU here to compare"))
    offload_gb = plan["cpu_memory_per_node_gb"]
    if offload_gb:
        import psutil

        total = psutil.virtual_memory().total / GB
        per_node = len(node_gpus) or plan["setup"]["gpus_per_node"]
        need("RAM for offload", offload_gb <= total, f"offloaded states of {per_node} GPU workers per node take "
             f"{offload_gb:.1f} GB; this node has {total:.1f} GB")
    return needs


# ---------------------------------------------------------------- the command


def run_doctor(cfg: Config | None, *, address: str | None = None, as_json: bool = False,
               build: bool = False) -> int:
    """Print the report; return the exit status (1 when something needed is missing)."""
    # DeepSpeed and op builds log on stdout; keep stdout for the report (and --json clean).
    with contextlib.redirect_stdout(sys.stderr):
        built = build_ops() if build else []
        node_gpus = gpus()
        checks = software() + hardware() + deepspeed_ops() + [ray_cluster(address)]
        if cfg is not None:
            checks += config_needs(cfg, checks, node_gpus)
    missing = [c for c in checks if c.status == "missing" and (c.needed_by_config or c.section in ("ray", "deepspeed ops"))]
    if as_json:
        print(json.dumps({"checks": [asdict(c) for c in checks], "built_ops_seconds": dict(built),
                          "missing": [c.name for c in missing]}, indent=2))
    else:
        print_checks(checks, built, cfg, missing)
    return 1 if missing else 0


def print_checks(checks: list[Check], built: list[tuple[str, float]], cfg: Config | None, missing: list[Check]) -> None:
    marks = {"ok": "[ OK ]", "warn": "[WARN]", "missing": "[MISS]", "info": "[INFO]"}
    for name, seconds in built:
        print(f"built DeepSpeed op {name} in {seconds:.0f} s")
    section = None
    for check in checks:
        if check.section != section:
            section = check.section
            title = f"needs of {cfg.source}" if section == "config" and cfg is not None else section
            print(f"-- {title}")
        print(f"{marks[check.status]} {check.name:<31} {check.detail}")
    if missing:
        print(f"MISSING ({len(missing)}): {', '.join(c.name for c in missing)} (see [MISS] above)")
    else:
        print("Nothing needed is missing.")


def load_optional_config(path: str | None, overrides: tuple[str, ...]) -> Config | None:
    from llmft.config import load_config

    if path is None:
        if overrides:
            raise LlmftError(f"Overrides ({' '.join(overrides)}) need a CONFIG to apply to.")
        return None
    return load_config(path, overrides)
