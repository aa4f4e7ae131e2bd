"""A model's architecture from its config.json, read in one place for every command.

A local folder's config.json is read directly; a Llama-2 hub id llmft ships a config for needs no
download; anything else goes through `transformers.AutoConfig` (hub or local cache). Parameter
counts follow from the architecture, so `llmft plan` needs no table of model names.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from llmft.errors import LlmftError

SHIPPED_CONFIGS_DIR = Path(__file__).parent.parent / "model_configs"

# Hub ids whose architecture ships with llmft, so planning them needs no download.
KNOWN_HUB_CONFIGS = {
    "meta-llama/llama-2-7b-hf": "llama-2-7b.json",
    "meta-llama/llama-2-7b-chat-hf": "llama-2-7b.json",
    "meta-llama/llama-2-7b": "llama-2-7b.json",
    "meta-llama/llama-2-13b-hf": "llama-2-13b.json",
    "meta-llama/llama-2-13b-chat-hf": "llama-2-13b.json",
    "meta-llama/llama-2-13b": "llama-2-13b.json",
    "meta-llama/llama-2-70b-hf": "llama-2-70b.json",
    "meta-llama/llama-2-70b-chat-hf": "llama-2-70b.json",
    "meta-llama/llama-2-70b": "llama-2-70b.json",
}


def load_model_config(name_or_path: str, trust_remote_code: bool = False) -> tuple[dict[str, Any], str]:
    """The model's config.json as a dict, and where it came from.

    A local folder is read directly; a known Llama-2 hub id uses the config shipped with llmft;
    anything else goes through `transformers.AutoConfig` (hub or local cache).
    """
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        config_json = folder / "config.json"
        if not config_json.is_file():
            raise LlmftError(f"model.name_or_path: {folder} is a folder without config.json. Point it at "
                             "a Hugging Face model folder (config.json, weights, tokenizer).")
        try:
            return json.loads(config_json.read_text()), str(config_json)
        except json.JSONDecodeError as exc:
            raise LlmftError(f"{config_json}: invalid JSON at line {exc.lineno}: {exc.msg}.") from None
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise LlmftError(f"model.name_or_path: {folder} is not a folder (a hub id has the form owner/name). "
                         "`llmft plan` needs only config.json: pass a local folder holding it, e.g. one made by "
                         "`llmft models make-tiny --out DIR` or `llmft models import-gguf`.")
    shipped = KNOWN_HUB_CONFIGS.get(name_or_path.lower())
    if shipped:
        return json.loads((SHIPPED_CONFIGS_DIR / shipped).read_text()), f"llmft's shipped {shipped}"
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # hub unreachable, unknown id, gated repo: all fixed the same way
        raise LlmftError(
            f"model.name_or_path: cannot read the config of `{name_or_path}` ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}). `llmft plan` needs only config.json: "
            "pass a local folder holding it (e.g. `model.name_or_path=path/to/folder`), or a Llama-2 hub id "
            f"llmft ships ({', '.join(sorted({k for k in KNOWN_HUB_CONFIGS if k.endswith('-hf')}))})."
        ) from None
    return config.to_dict(), f"transformers AutoConfig ({name_or_path})"


def architecture(model_config: dict[str, Any]) -> dict[str, Any]:
    """The numbers the planner needs, from a causal LM's config.json (any family transformers ships).

    Sizes come from the language model's config (a multimodal checkpoint's `text_config`); the
    parameter counts from the model itself, built by transformers on PyTorch's meta device
    (shapes only, no memory), so each family's own layout counts: Qwen2's attention biases,
    Gemma's extra norms, Phi-3's fused projections, tied embeddings once.
    """
    text = model_config.get("text_config") or model_config
    missing = [key for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size", "vocab_size") if not text.get(key)]
    if missing:
        raise LlmftError(f"The model's config.json lacks {', '.join(missing)}: `llmft plan` handles decoder-only "
                         "language models whose config names these sizes.")
    hidden = int(text["hidden_size"])
    heads = int(text["num_attention_heads"])
    total, largest = _parameter_counts(json.dumps(model_config, sort_keys=True))
    return {
        "model_type": text.get("model_type") or model_config.get("model_type"),
        "hidden_size": hidden,
        "num_layers": int(text["num_hidden_layers"]),
        "num_heads": heads,
        "num_kv_heads": int(text.get("num_key_value_heads") or heads),
        "head_dim": int(text.get("head_dim") or hidden // heads),
        "intermediate_size": int(text["intermediate_size"]),
        "vocab_size": int(text["vocab_size"]),
        "tied_embeddings": bool(model_config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        "sliding_window": text.get("sliding_window"),
        "parameters": total,
        "largest_module_parameters": largest,
    }


def count_parameters(arch: dict[str, Any]) -> int:
    """Total parameters (tied embeddings counted once), as `architecture` counted them."""
    return arch["parameters"]


def largest_layer_parameters(arch: dict[str, Any]) -> int:
    """Parameters of the largest single module, as DeepSpeed's `model_to_params` counts them."""
    return arch["largest_module_parameters"]


@functools.lru_cache(maxsize=32)
def _parameter_counts(config_json: str) -> tuple[int, int]:
    """(total, largest module) of the model `AutoModelForCausalLM` builds from this config, on the meta device."""
    import torch
    from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    values = json.loads(config_json)
    model_type = values.pop("model_type", None)
    if model_type not in CONFIG_MAPPING:
        raise LlmftError(f"The model's config.json has model_type {model_type!r}, which is not one transformers "
                         "ships: `llmft plan` counts parameters by building the model from transformers' own "
                         "classes (shapes only). Use a config.json of a transformers architecture.")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the config's token ids may lie outside a planning-only vocabulary
    try:
        config = AutoConfig.for_model(model_type, **values)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise LlmftError(f"transformers cannot build a {model_type} model from this config.json "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}). Check the file.") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    # DeepSpeed's `model_to_params` dedups shared (tied) weights by data pointer; meta tensors have
    # none, so by identity here.
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest = max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())
    return total, largest


def local_hidden_size(name_or_path: str) -> int | None:
    """The hidden size from a local model folder's config.json, or None (no hub access)."""
    if not (Path(name_or_path).expanduser() / "config.json").is_file():
        return None
    return load_model_config(name_or_path)[0].get("hidden_size")
