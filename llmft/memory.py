"""`llmft plan`: the memory plan, per-GPU memory of a config's model under its ZeRO stage and offload.

Works from the model's config.json alone (no weights, no hub access for the shipped Llama-2
sizes). Units: GB means 2**30 bytes, as DeepSpeed's estimators print them.

The model, per training worker (one GPU), with P parameters and N workers:

  state               bytes/param (16-bit training)  sharded over N from   lives on
  weights             2                              ZeRO-3                offload_params device
  gradients           2                              ZeRO-2                CPU once the optimizer is offloaded (ZeRO-2/3)
  fp32 gradients      4 (the step's fp32 copy)       ZeRO-1                the optimizer's device
  optimizer states    12 (fp32 master + Adam m, v)   ZeRO-1                offload_optimizer device

This is the ZeRO paper's 2 + 2 + 12 (Rajbhandari et al. 2020) plus the fp32 gradient partition
DeepSpeed builds for the optimizer step, which its own estimator counts too (its "18" bytes).
Under ZeRO-3 without offload that fp32 copy exists for one `sub_group_size` chunk at a time.
On top: ZeRO-3's working set (the largest module gathered in 16 bits plus its full 16-bit
gradient, as in DeepSpeed's `4 * largest_layer_params`, plus the prefetch bucket), the gradient
reduction buckets, activations, and a fixed runtime reserve.

Activations follow the method of Korthikanti et al. 2022, "Reducing Activation Recomputation in
Large Transformer Models" (arXiv:2205.05198, section 4.1), which gives s*b*h*(34 + 5*a*s/h)
bytes per GPT layer in 16 bits. Counting the tensors a Hugging Face Llama layer keeps for
backward the same way (s sequence, b micro batch, h hidden, i MLP width, a heads):
  RMSNorm inputs kept in fp32 (2 x 4 sbh), q/k/v projection input (2 sbh), Q, K, V as passed to
  attention (6 sbh; K and V repeated to all heads), attention output kept by the kernel and the
  o-projection input (4 sbh), MLP input (2 sbh), SwiGLU gate, up, SiLU(gate) and down-projection
  input (4 x 2 sbi)  =>  s*b*(22 h + 8 i) bytes per layer.
  `eager` attention also keeps the softmax (fp32 and 16-bit copies): + 6*a*s^2*b bytes. sdpa and
  flash attention keep no s^2 tensor.
With gradient checkpointing each layer keeps only its input (2 sbh) and one layer at a time is
recomputed in full during backward. Both cases add the head: final norm input (4 sbh) and the
final hidden states (2 sbh). The loss (`llmft.train.loss`) never holds the whole logits: one
chunk of fp32 logits and its softmax (2 x 4 x CHUNK_LOGITS bytes), and from its forward to the
backward the gradients it computed: the output projection's (an fp32 sum plus its copy in the
training dtype, V*h*(4 + 2) bytes) and the hidden states' (2 sbh). Sequences are taken at
`data.max_length`, the worst case. fp32 training doubles every 16-bit figure.

The few special tokens a task adds to the vocabulary are left out: they change P by < 0.01%.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from typing import Any

from llmft.config import Config
from llmft.errors import LlmftError
from llmft.models.architecture import architecture, count_parameters, largest_layer_parameters, load_model_config
from llmft.train.deepspeed import build_deepspeed_config, training_dtype
from llmft.train.loss import CHUNK_LOGITS

GB = 2**30

# What a GPU never gives to tensors: the driver's share (a "24 GB" A10G shows 22.5 GB to CUDA),
# the CUDA context, NCCL's buffers and allocator fragmentation. A deliberate round figure.
RUNTIME_RESERVE_GB = 2.5


# Nodes are assumed to hold up to this many GPUs (g5.48xlarge: 8 A10G; p4d/p5: 8).
DEFAULT_GPUS_PER_NODE = 8


def chunked_loss_bytes(arch: dict[str, Any], bytes_per_value: int) -> int:
    """What the chunked loss holds at once: one chunk's fp32 logits and softmax, and the output
    projection's gradient (fp32 while it is summed over the chunks, then in the training dtype)."""
    return 2 * 4 * CHUNK_LOGITS + arch["vocab_size"] * arch["hidden_size"] * (4 + bytes_per_value)


def activation_bytes(arch: dict[str, Any], micro_batch: int, seq_len: int, checkpointing: bool,
                     attn_implementation: str = "sdpa", bytes_per_value: int = 2) -> int:
    """Activation memory of one micro batch (see the module docstring for the formula)."""
    s, b, h = seq_len, micro_batch, arch["hidden_size"]
    scale = bytes_per_value / 2  # the formula counts 16-bit values
    per_layer = s * b * (22 * h + 8 * arch["intermediate_size"])
    if attn_implementation == "eager":
        per_layer += 6 * arch["num_heads"] * s * s * b
    head = 8 * s * b * h
    loss = chunked_loss_bytes(arch, bytes_per_value)
    if checkpointing:
        layers = arch["num_layers"] * 2 * s * b * h + per_layer
    else:
        layers = arch["num_layers"] * per_layer
    return int(scale * (layers + head) + loss)


# ---------------------------------------------------------------- the estimate


def _zero_settings(cfg: Config, hidden_size: int) -> dict[str, Any]:
    """Bucket sizes as DeepSpeed will see them: llmft's generated config, DeepSpeed's defaults."""
    with _quiet_stdout():
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    if cfg.training.global_batch_size == "auto":  # batch sizes do not change memory per GPU
        training = cfg.training.model_copy(update={
            "global_batch_size": cfg.world_size * cfg.training.micro_batch_size})
        cfg = cfg.model_copy(update={"training": training})
    zero = DeepSpeedZeroConfig(**build_deepspeed_config(cfg, hidden_size=hidden_size)["zero_optimization"])
    return {
        "reduce_bucket_size": int(zero.reduce_bucket_size),
        "allgather_bucket_size": int(zero.allgather_bucket_size),
        "prefetch_bucket_size": int(zero.prefetch_bucket_size),
        "sub_group_size": int(zero.sub_group_size),
        "overlap_comm": bool(zero.overlap_comm),
    }


def _per_gpu_items(params: int, largest: int, setup: dict[str, Any], zero: dict[str, Any],
                   num_gpus: int) -> list[dict[str, Any]]:
    """Model states, ZeRO working set and buckets for one GPU worker: where each lives and how big."""
    stage, mixed = setup["zero_stage"], setup["mixed_precision"]
    opt_device = setup["offload_optimizer"] if setup["offload_optimizer"] != "none" else "gpu"
    param_device = setup["offload_params"] if stage == 3 and setup["offload_params"] != "none" else "gpu"
    value_bytes = 2 if mixed else 4
    shard = params / num_gpus

    def state(name: str, bytes_per_param: int, sharded: bool, device: str, count: float | None = None):
        count = (shard if sharded else params) if count is None else count
        return {"name": name, "bytes_per_param": bytes_per_param, "sharded": sharded,
                "device": device, "bytes": int(bytes_per_param * count)}

    items = [
        state("weights", value_bytes, stage == 3, param_device),
        # ZeRO-Offload moves each reduced gradient partition straight to the CPU.
        state("gradients", value_bytes, stage >= 2,
              "cpu" if stage >= 2 and opt_device != "gpu" else "gpu"),
    ]
    if mixed:
        fp32_count = None
        if stage == 3 and opt_device == "gpu":  # built one sub-group at a time, then freed
            fp32_count = min(shard, zero["sub_group_size"])
        name = "fp32 gradients (1 sub-group)" if fp32_count is not None and fp32_count < shard else "fp32 gradients"
        items.append(state(name, 4, stage >= 1, opt_device, fp32_count))
    # ZeRO keeps its own fp32 partition even for an fp32 model; plain stage 0 fp32 has no copy.
    items.append(state("optimizer states", 12 if (mixed or stage >= 1) else 8, stage >= 1, opt_device))
    if stage == 3:
        working = 2 * value_bytes * largest + value_bytes * zero["prefetch_bucket_size"]
        items.append({"name": "ZeRO-3 working set", "bytes_per_param": None,
                      "sharded": False, "device": "gpu", "bytes": int(working)})
    if stage >= 1:
        reduce_buffers = 2 if (stage < 3 and zero["overlap_comm"]) else 1
        buckets = value_bytes * zero["reduce_bucket_size"] * reduce_buffers
        if stage < 3:
            buckets += value_bytes * zero["allgather_bucket_size"]
        items.append({"name": "comm. buckets", "bytes_per_param": None, "sharded": False,
                      "device": "gpu", "bytes": int(buckets)})
    return items


def _gpu_total_bytes(items: list[dict[str, Any]], activations: int) -> int:
    on_gpu = sum(item["bytes"] for item in items if item["device"] == "gpu")
    return on_gpu + activations + int(RUNTIME_RESERVE_GB * GB)


def _min_gpus(params: int, largest: int, setup: dict[str, Any], zero: dict[str, Any],
              activations: int, gpu_memory_gb: float) -> int | None:
    """Fewest GPUs of this size that hold one worker's share; None if no count is enough."""
    def fits(n: int) -> bool:
        items = _per_gpu_items(params, largest, setup, zero, n)
        return _gpu_total_bytes(items, activations) <= gpu_memory_gb * GB

    limit = 1 << 20
    if not fits(limit):
        return None
    low, high = 0, 1  # fits(high) becomes true by doubling; the answer lies in (low, high]
    while not fits(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def deepspeed_estimate(params: int, largest: int, zero_stage: int, offload_optimizer: bool,
                       offload_params: bool, gpus_per_node: int, num_nodes: int) -> dict[str, Any] | None:
    """DeepSpeed's own model-state estimate (ZeRO-2 and ZeRO-3 only), with its default 1.5 CPU buffer factor."""
    with _quiet_stdout():
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    if zero_stage == 3:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total_params=params, largest_layer_params=largest, num_gpus_per_node=gpus_per_node,
            num_nodes=num_nodes, cpu_offload=offload_optimizer, cpu_offload_params=offload_params,
            zero_init=True)
        function = "deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs"
    elif zero_stage == 2:
        cpu, gpu = estimate_zero2_model_states_mem_needs(
            total_params=params, num_gpus_per_node=gpus_per_node, num_nodes=num_nodes,
            cpu_offload=offload_optimizer)
        function = "deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs"
    else:
        return None
    return {"function": function, "gpu_model_states_gb": gpu / GB, "cpu_per_node_gb": cpu / GB}


def estimate(model_config: dict[str, Any], cfg: Config, gpu_memory_gb: float,
             gpus_per_node: int | None = None) -> dict[str, Any]:
    """Per-GPU memory of `cfg`'s training run for the model described by `model_config` (a config.json dict).

    `gpus_per_node` only splits the CPU memory for offload by node; default: up to 8 per node.
    """
    arch = architecture(model_config)
    params, largest = count_parameters(arch), largest_layer_parameters(arch)
    dtype = training_dtype(cfg)
    num_gpus = cfg.world_size
    gpus_per_node = gpus_per_node or math.gcd(num_gpus, DEFAULT_GPUS_PER_NODE)
    num_nodes = math.ceil(num_gpus / gpus_per_node)
    setup = {
        "zero_stage": cfg.deepspeed.zero_stage,
        "offload_optimizer": cfg.deepspeed.offload_optimizer,
        "offload_params": cfg.deepspeed.offload_params,
        "dtype": dtype,
        "mixed_precision": dtype in ("bfloat16", "float16"),
        "num_gpus": num_gpus,
        "gpus_per_node": gpus_per_node,
        "num_nodes": num_nodes,
        "micro_batch_size": cfg.training.micro_batch_size,
        "sequence_length": cfg.data.max_length,
        "gradient_checkpointing": cfg.model.gradient_checkpointing,
        "attn_implementation": cfg.model.attn_implementation,
    }
    zero = _zero_settings(cfg, arch["hidden_size"])
    items = _per_gpu_items(params, largest, setup, zero, num_gpus)

    act_args = dict(arch=arch, micro_batch=cfg.training.micro_batch_size, seq_len=cfg.data.max_length,
                    attn_implementation=cfg.model.attn_implementation,
                    bytes_per_value=2 if setup["mixed_precision"] else 4)
    act_with = activation_bytes(checkpointing=True, **act_args)
    act_without = activation_bytes(checkpointing=False, **act_args)
    activations = act_with if cfg.model.gradient_checkpointing else act_without

    total = _gpu_total_bytes(items, activations)
    model_states_gpu = sum(item["bytes"] for item in items if item["device"] == "gpu")
    off_gpu = {device: sum(i["bytes"] for i in items if i["device"] == device) / GB for device in ("cpu", "nvme")}
    ds = deepspeed_estimate(params, largest, setup["zero_stage"], setup["offload_optimizer"] != "none",
                            setup["offload_params"] != "none", gpus_per_node, num_nodes)
    if ds:
        ds["ours_gpu_model_states_gb"] = model_states_gpu / GB
        ds["ratio_ours_to_deepspeed"] = model_states_gpu / GB / ds["gpu_model_states_gb"]
    fits = total <= gpu_memory_gb * GB
    min_gpus = _min_gpus(params, largest, setup, zero, activations, gpu_memory_gb)
    at_min = None
    if min_gpus:
        min_items = _per_gpu_items(params, largest, setup, zero, min_gpus)
        cpu_per_gpu = sum(i["bytes"] for i in min_items if i["device"] == "cpu")
        at_min = {"num_gpus": min_gpus, "gpu_total_gb": _gpu_total_bytes(min_items, activations) / GB,
                  "cpu_memory_per_node_gb": cpu_per_gpu * math.gcd(min_gpus, DEFAULT_GPUS_PER_NODE) / GB}
    return {
        "model": {"name_or_path": cfg.model.name_or_path, "architecture": arch,
                  "parameters": params, "largest_layer_parameters": largest},
        "setup": setup,
        "zero_buckets": zero,
        "per_gpu": [{**item, "gb": item["bytes"] / GB} for item in items],
        "activations_gb": {"with_checkpointing": act_with / GB, "without_checkpointing": act_without / GB,
                           "counted": "with_checkpointing" if cfg.model.gradient_checkpointing else "without_checkpointing",
                           "of_which_loss": chunked_loss_bytes(arch, act_args["bytes_per_value"]) / GB},
        "runtime_reserve_gb": RUNTIME_RESERVE_GB,
        "gpu_model_states_gb": model_states_gpu / GB,
        "gpu_total_gb": total / GB,
        "gpu_memory_gb": gpu_memory_gb,
        "fits": fits,
        "min_gpus": min_gpus,
        "at_min_gpus": at_min,
        "offloaded_per_gpu_gb": off_gpu,
        "cpu_memory_per_node_gb": off_gpu["cpu"] * gpus_per_node,
        "nvme_per_node_gb": off_gpu["nvme"] * gpus_per_node,
        "deepspeed_estimate": ds,
        "units": "GB = 2**30 bytes",
    }


# ---------------------------------------------------------------- evaluation

# Order of preference of `eval.engine: auto` among the engines that fit: a whole model per GPU
# needs nothing but the model; vLLM splits it over a node's GPUs; ZeRO-3 runs any size anywhere.
EVAL_ENGINES = ("replicas", "vllm", "zero3")
# vLLM's tensor-parallel sizes (a power of two that divides the attention heads, within a node).
VLLM_TP_SIZES = (1, 2, 4, 8)
# What an eval engine holds on each device, in the order the plan shows it.
EVAL_ITEMS = ("weights", "ZeRO-3 working set", "KV cache", "activations", "runtime reserve")


def kv_cache_bytes(arch: dict[str, Any], batch: int, seq_len: int, bytes_per_value: int) -> int:
    """Keys and values of every layer for `batch` sequences of `seq_len` tokens (GQA heads only)."""
    return 2 * arch["num_layers"] * arch["num_kv_heads"] * arch["head_dim"] * batch * seq_len * bytes_per_value


def inference_activation_bytes(arch: dict[str, Any], batch: int, seq_len: int, bytes_per_value: int) -> int:
    """The prefill's transient tensors: one layer at a time and nothing kept for a backward pass,
    so the hidden state, q/k/v and attention output (about 4 h per token) and the MLP's gate, up
    and their product (3 i per token), plus the last position's logits in fp32."""
    per_token = 4 * arch["hidden_size"] + 3 * arch["intermediate_size"]
    return batch * seq_len * per_token * bytes_per_value + batch * arch["vocab_size"] * 4


def vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def default_device_memory_gb(cfg: Config) -> float:
    """`eval.device_memory_gb`, else 24 GB per GPU worker, else this machine's RAM per CPU worker."""
    if cfg.eval.device_memory_gb:
        return cfg.eval.device_memory_gb
    if cfg.scaling.use_gpu:
        return 24.0
    import psutil

    return psutil.virtual_memory().total / GB / cfg.world_size


def eval_estimate(model_config: dict[str, Any], cfg: Config, device_memory_gb: float, seq_len: int,
                  vllm_available: bool | None = None) -> dict[str, Any]:
    """Memory per device of each eval engine for `cfg`'s workers, and the engine `auto` picks.

    `seq_len` is the longest prompt plus the answer, in tokens. Every engine holds the KV cache of
    its own batch (`eval.batch_size` sequences): ZeRO-3 shards the weights, not the cache.
    """
    arch = architecture(model_config)
    params, largest = count_parameters(arch), largest_layer_parameters(arch)
    dtype = training_dtype(cfg)
    value_bytes = 4 if dtype == "float32" else 2
    workers, batch = cfg.world_size, cfg.eval.batch_size
    gpus_per_node = math.gcd(workers, DEFAULT_GPUS_PER_NODE) if cfg.scaling.use_gpu else workers
    weights = params * value_bytes
    kv = kv_cache_bytes(arch, batch, seq_len, value_bytes)
    activations = inference_activation_bytes(arch, batch, seq_len, value_bytes)
    reserve = int(RUNTIME_RESERVE_GB * GB)
    if vllm_available is None:
        vllm_available = vllm_installed()

    def engine(gpus_per_replica: int, items: list[tuple[str, int, str, int]], unavailable: str | None = None) -> dict:
        """`items`: (name, bytes on one device, where they live, how many devices share the whole)."""
        items = [*items, ("activations", activations, "device", 1), ("runtime reserve", reserve, "device", 1)]
        on_device = sum(size for _, size, where, _ in items if where == "device")
        return {"gpus_per_replica": gpus_per_replica, "replicas": workers // gpus_per_replica,
                "per_device": [{"name": name, "gb": size / GB, "lives_on": where, "split": split}
                               for name, size, where, split in items],
                "device_total_gb": on_device / GB, "fits": on_device <= device_memory_gb * GB,
                "unavailable": unavailable}

    engines = {"replicas": engine(1, [("weights", weights, "device", 1), ("KV cache", kv, "device", 1)])}

    # vLLM: the smallest tensor-parallel size that fits, within one node; it splits weights and cache.
    sizes = [tp for tp in VLLM_TP_SIZES if tp <= gpus_per_node and arch["num_heads"] % tp == 0] or [1]
    vllm_engines = [engine(tp, [("weights", weights // tp, "device", tp), ("KV cache", kv // tp, "device", tp)])
                    for tp in sizes]
    engines["vllm"] = next((e for e in vllm_engines if e["fits"]), vllm_engines[-1])
    if not cfg.scaling.use_gpu:
        engines["vllm"]["unavailable"] = "GPU only (scaling.use_gpu is false)"
    elif not vllm_available:
        engines["vllm"]["unavailable"] = "vLLM is not installed (pip install 'llmft[vllm]')"

    # ZeRO-3: weights sharded over every worker (or offloaded), the working set gathered one
    # module at a time plus the prefetch bucket, and each worker's own batch's KV cache.
    zero = _zero_settings(cfg.model_copy(update={"deepspeed": cfg.deepspeed.model_copy(update={"zero_stage": 3})}),
                          arch["hidden_size"])
    offloaded = cfg.deepspeed.offload_params != "none"
    engines["zero3"] = engine(workers, [
        ("weights", weights // workers, cfg.deepspeed.offload_params if offloaded else "device", workers),
        ("ZeRO-3 working set", value_bytes * (largest + zero["prefetch_bucket_size"]), "device", 1),
        ("KV cache", kv, "device", 1)])

    auto = next((name for name in EVAL_ENGINES if engines[name]["fits"] and not engines[name]["unavailable"]), None)
    return {
        "model": {"name_or_path": cfg.model.name_or_path, "parameters": params},
        "setup": {"workers": workers, "use_gpu": cfg.scaling.use_gpu, "dtype": dtype, "batch_size": batch,
                  "sequence_length": seq_len, "device_memory_gb": device_memory_gb, "gpus_per_node": gpus_per_node},
        "engines": engines,
        "auto": auto,
        "units": "GB = 2**30 bytes",
    }


def print_eval_plan(report: dict[str, Any]) -> None:
    """Human summary of an `eval_estimate` report."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    setup = report["setup"]
    device = "GPU" if setup["use_gpu"] else "CPU worker"
    console.print(f"[bold]Evaluation[/]: {report['model']['parameters'] / 1e9:.2f}B parameters in {setup['dtype']}, "
                  f"{setup['workers']} {device}s of {setup['device_memory_gb']:.1f} GB, batches of {setup['batch_size']} "
                  f"sequences x {setup['sequence_length']} tokens (prompt and answer)")
    table = Table(title=f"Memory per {'GPU' if setup['use_gpu'] else 'CPU worker'} by eval engine (GB = 2^30 bytes)")
    table.add_column("")
    for name in EVAL_ENGINES:
        table.add_column(name + (" (auto)" if name == report["auto"] else ""), justify="right")
    engines = [report["engines"][name] for name in EVAL_ENGINES]
    table.add_row("GPUs per replica" if setup["use_gpu"] else "workers per replica",
                  *(str(e["gpus_per_replica"]) for e in engines))
    table.add_row("replicas", *(str(e["replicas"]) for e in engines))
    for item_name in EVAL_ITEMS:
        cells = []
        for e in engines:
            item = next((i for i in e["per_device"] if i["name"] == item_name), None)
            if item is None:
                cells.append("-")
                continue
            split = f" (1/{item['split']})" if item["split"] > 1 else ""
            where = "" if item["lives_on"] == "device" else f" on {item['lives_on']}"
            cells.append(f"{item['gb']:.2f}{split}{where}")
        table.add_row(item_name, *cells)
    table.add_row("[bold]total[/]", *(f"[bold]{e['device_total_gb']:.2f}[/]" for e in engines))
    table.add_row("fits", *("yes" if e["fits"] else "no" for e in engines))
    console.print(table)
    for name, e in zip(EVAL_ENGINES, engines):
        if e["unavailable"]:
            console.print(f"{name}: unavailable here: {escape(e['unavailable'])}.")
    if report["auto"]:
        console.print(f"`eval.engine: auto` picks [bold]{report['auto']}[/].")
    else:
        console.print("[bold red]No engine fits[/]: lower eval.batch_size or data.max_length, add workers, "
                      "or offload parameters (deepspeed.offload_params: cpu) for zero3.")


# ---------------------------------------------------------------- the command


def run_plan(cfg: Config, as_json: bool, gpu_memory_gb: float | None, with_eval: bool = False) -> None:
    """`llmft plan`: estimate and print (a table, or JSON with --json). `with_eval` adds the eval
    engines, planned for `eval.batch_size` sequences of `data.max_length` tokens."""
    if gpu_memory_gb is not None and gpu_memory_gb <= 0:
        raise LlmftError(f"--gpu-memory-gb must be positive, not {gpu_memory_gb}.")
    model_config, origin = load_model_config(cfg.model.name_or_path, cfg.model.trust_remote_code)
    report = estimate(model_config, cfg, gpu_memory_gb or 24.0)
    report["model"]["config_source"] = origin
    if with_eval:
        report["eval"] = eval_estimate(model_config, cfg, gpu_memory_gb or default_device_memory_gb(cfg),
                                       seq_len=cfg.data.max_length)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print_plan(report)
        if with_eval:
            print_eval_plan(report["eval"])


def _sharding(item: dict[str, Any], setup: dict[str, Any]) -> str:
    return f"/ {setup['num_gpus']}" if item["sharded"] else "-"


def print_plan(report: dict[str, Any]) -> None:
    """Human summary of an `estimate` report."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    setup, model = report["setup"], report["model"]
    offload = f"optimizer->{setup['offload_optimizer']}, params->{setup['offload_params']}"
    console.print(f"[bold]{model['name_or_path']}[/]: {model['parameters'] / 1e9:.2f}B parameters "
                  f"(largest module {model['largest_layer_parameters'] / 1e6:.0f}M), config from "
                  f"{model.get('config_source', '?')}")
    console.print(f"ZeRO-{setup['zero_stage']} ({offload}), {setup['dtype']}, {setup['num_gpus']} GPUs "
                  f"({setup['gpus_per_node']} per node assumed), micro batch {setup['micro_batch_size']} x "
                  f"{setup['sequence_length']} tokens, gradient checkpointing "
                  f"{'on' if setup['gradient_checkpointing'] else 'off'}")
    table = Table(title="Memory per GPU worker (GB = 2^30 bytes)")
    for column in ("", "bytes/param", "sharded", "lives on", "GPU GB", "off-GPU GB"):
        table.add_column(column, justify="left" if not column else "right")
    for item in report["per_gpu"]:
        on_gpu = item["device"] == "gpu"
        table.add_row(item["name"], "" if item["bytes_per_param"] is None else str(item["bytes_per_param"]),
                      _sharding(item, setup), item["device"].upper(),
                      f"{item['gb']:.2f}" if on_gpu else "0", "" if on_gpu else f"{item['gb']:.2f}")
    acts = report["activations_gb"]
    for key, label in (("with_checkpointing", "activations, ckpt on"),
                       ("without_checkpointing", "activations, ckpt off")):
        counted = key == acts["counted"]
        table.add_row(label if counted else f"[dim]{label} (not counted)[/]", "", "", "GPU",
                      f"{acts[key]:.2f}" if counted else f"[dim]{acts[key]:.2f}[/]", "")
    table.add_row("runtime reserve", "", "", "GPU", f"{report['runtime_reserve_gb']:.2f}", "")
    table.add_row("[bold]total[/]", "", "", "", f"[bold]{report['gpu_total_gb']:.2f}[/]",
                  f"{sum(report['offloaded_per_gpu_gb'].values()):.2f}")
    console.print(table)
    ds = report["deepspeed_estimate"]
    if ds:
        console.print(f"Model states on GPU: ours {ds['ours_gpu_model_states_gb']:.2f} GB, DeepSpeed's "
                      f"estimator {ds['gpu_model_states_gb']:.2f} GB (ratio {ds['ratio_ours_to_deepspeed']:.2f}). "
                      f"CPU per node: ours {report['cpu_memory_per_node_gb']:.1f} GB, DeepSpeed "
                      f"{ds['cpu_per_node_gb']:.1f} GB (with its 1.5x buffer factor).")
    else:
        console.print(f"DeepSpeed has estimators for ZeRO-2 and ZeRO-3 only. CPU per node for offload: "
                      f"{report['cpu_memory_per_node_gb']:.1f} GB.")
    if report["nvme_per_node_gb"]:
        console.print(f"NVMe per node: {report['nvme_per_node_gb']:.1f} GB.")
    console.print("[dim]ZeRO-3 working set: the largest module gathered in 16 bits with its gradient, plus "
                  "the prefetch bucket. Runtime reserve: driver share, CUDA context, NCCL, fragmentation. "
                  "Formulas: `llmft/memory.py` docstring.[/]")
    memory, total, at_min = report["gpu_memory_gb"], report["gpu_total_gb"], report["at_min_gpus"]
    if report["fits"]:
        console.print(f"[bold green]Fits[/]: {total:.1f} of {memory:g} GB per GPU.")
    else:
        console.print(f"[bold red]Does not fit[/]: {total:.1f} GB needed per GPU, {memory:g} GB available.")
    remedies = ("offload more, " + ("" if setup["gradient_checkpointing"] else "turn on gradient checkpointing, ")
                + "or lower training.micro_batch_size or data.max_length")
    if at_min is None:
        console.print(f"No number of {memory:g} GB GPUs is enough at this ZeRO stage and offload: activations "
                      f"and unsharded state alone exceed it. Use a higher ZeRO stage, {remedies}.")
    else:
        cpu = (f", with {at_min['cpu_memory_per_node_gb']:.0f} GB of CPU memory per node for offload"
               if at_min["cpu_memory_per_node_gb"] else "")
        console.print(f"GPU memory alone needs at least {at_min['num_gpus']} GPU(s) of {memory:g} GB at this ZeRO "
                      f"stage and offload ({at_min['gpu_total_gb']:.1f} GB each{cpu}).")
        if not report["fits"]:
            console.print(f"Raise scaling.num_workers to at least {at_min['num_gpus']}, or {remedies}.")


@contextlib.contextmanager
def _quiet_stdout():
    """Importing DeepSpeed logs an accelerator warning on stdout; keep stdout clean for --json."""
    with contextlib.redirect_stdout(sys.stderr):
        yield
