"""Which eval engine runs, checked before Ray starts, and running it.

`eval.engine` (or `llmft eval --engine`) names one; `auto` takes the eval plan's pick
(`memory.eval_estimate`, the numbers `llmft plan --eval` prints): replicas when the whole model
and its batch's KV cache fit one device, else vllm when it is installed on GPU workers, else zero3.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from llmft.config import Config
from llmft.errors import LlmftError
from llmft.eval.generate import Generated


@dataclass
class EngineChoice:
    name: str                    # replicas | zero3 | vllm
    requested: str               # eval.engine, possibly `auto`
    plan: dict[str, Any] | None  # the eval plan; None when the model's architecture cannot be planned
    parameters: int | None       # the model's parameter count, from its config.json


def choose_engine(cfg: Config, model_folder: str, *, seq_len: int) -> EngineChoice:
    """The engine for `cfg`'s model, whose config.json is in `model_folder` (a local copy of a URI,
    or a hub id), for sequences of `seq_len` tokens."""
    from llmft.memory import default_device_memory_gb, eval_estimate
    from llmft.models.architecture import load_model_config

    requested = cfg.eval.engine
    try:
        model_config, _ = load_model_config(model_folder, cfg.model.trust_remote_code)
        plan = eval_estimate(model_config, cfg, default_device_memory_gb(cfg), seq_len)
    except LlmftError as exc:
        if requested == "auto":
            print(f"llmft: cannot size the model for eval.engine auto ({exc}); using replicas.", file=sys.stderr)
        return EngineChoice(name="replicas" if requested == "auto" else requested, requested=requested,
                            plan=None, parameters=None)
    name = requested
    if requested == "auto":
        name = plan["auto"]
        if name is None:
            needs = ", ".join(f"{engine} {report['device_total_gb']:.1f} GB" for engine, report in plan["engines"].items())
            raise LlmftError(
                f"No eval engine fits {cfg.model.name_or_path} on {cfg.world_size} workers of "
                f"{plan['setup']['device_memory_gb']:.1f} GB for batches of {cfg.eval.batch_size} x {seq_len} tokens "
                f"(per device: {needs}). Lower eval.batch_size, add workers (scaling.num_workers), offload "
                "parameters (deepspeed.offload_params=cpu), or set eval.device_memory_gb if the devices are larger. "
                "`llmft plan CONFIG --eval` shows the plan.")
    check_runs_here(name, cfg)
    return EngineChoice(name=name, requested=requested, plan=plan, parameters=plan["model"]["parameters"])


def check_runs_here(engine: str, cfg: Config) -> None:
    """An engine that cannot run with this config or installation is a user error."""
    if engine != "vllm":
        return
    from llmft.memory import vllm_installed

    where = f" in {cfg.source}" if cfg.source else ""
    if not cfg.scaling.use_gpu:
        raise LlmftError(f"eval.engine vllm runs on GPUs only, and scaling.use_gpu is false{where}. Use "
                         "--engine zero3 or --engine replicas on CPU workers, or scaling.use_gpu=true on a GPU cluster.")
    if not vllm_installed():
        raise LlmftError("eval.engine vllm needs vLLM, which is not installed here. Install it where the eval "
                         "runs (`pip install 'llmft[vllm]'`, GPU machines only), or use --engine zero3 or --engine replicas.")


def generate(choice: EngineChoice, cfg: Config, prompts: list[str], batches: list[list[int]], *,
             stop_token: str | None, max_new_tokens: int, seq_len: int) -> Generated:
    """Answers to `prompts`, in order, from the chosen engine (Ray must be up)."""
    if choice.name == "replicas":
        from llmft.eval.replicas import generate_with_replicas

        return generate_with_replicas(cfg, prompts, batches, stop_token=stop_token, max_new_tokens=max_new_tokens)
    if choice.name == "zero3":
        from llmft.eval.zero3 import generate_with_zero3

        return Generated(generate_with_zero3(cfg, prompts, batches, stop_token=stop_token,
                                             max_new_tokens=max_new_tokens))
    from llmft.eval.vllm import generate_with_vllm

    vllm = choice.plan["engines"]["vllm"] if choice.plan else {"gpus_per_replica": 1, "replicas": cfg.world_size}
    return Generated(generate_with_vllm(cfg, prompts, stop_token=stop_token, max_new_tokens=max_new_tokens,
                                        tensor_parallel_size=vllm["gpus_per_replica"], replicas=vllm["replicas"],
                                        max_model_len=seq_len))
