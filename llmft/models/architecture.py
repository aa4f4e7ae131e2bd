"""A model's architecture from its config.json, read in one place for every command.

A local folder's config.json is read directly; a Llama-2 hub id llmft ships a config for needs no
download; anything else goes through `transformers.AutoConfig` (hub or local cache). Parameter
counts follow from the architecture, so `llmft plan` needs no table of model names.
"""

from __future__ import annotations

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
    """The numbers the estimate needs, from a Llama-style config.json."""
    missing = [key for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size", "vocab_size") if not model_config.get(key)]
    if missing:
        raise LlmftError(f"The model's config.json lacks {', '.join(missing)}: `llmft plan` handles "
                         "Llama-architecture (decoder-only, SwiGLU MLP) configs only.")
    hidden = int(model_config["hidden_size"])
    heads = int(model_config["num_attention_heads"])
    return {
        "hidden_size": hidden,
        "num_layers": int(model_config["num_hidden_layers"]),
        "num_heads": heads,
        "num_kv_heads": int(model_config.get("num_key_value_heads") or heads),
        "head_dim": int(model_config.get("head_dim") or hidden // heads),
        "intermediate_size": int(model_config["intermediate_size"]),
        "vocab_size": int(model_config["vocab_size"]),
        "tied_embeddings": bool(model_config.get("tie_word_embeddings", False)),
        "attention_bias": bool(model_config.get("attention_bias", False)),
        "mlp_bias": bool(model_config.get("mlp_bias", False)),
    }


def _layer_parameters(arch: dict[str, Any]) -> dict[str, int]:
    h, i, d = arch["hidden_size"], arch["intermediate_size"], arch["head_dim"]
    q_width, kv_width = arch["num_heads"] * d, arch["num_kv_heads"] * d
    attention = h * q_width + 2 * h * kv_width + q_width * h
    if arch["attention_bias"]:
        attention += q_width + 2 * kv_width + h
    mlp = 3 * h * i + ((2 * i + h) if arch["mlp_bias"] else 0)
    return {"attention": attention, "mlp": mlp, "norms": 2 * h, "largest_module": max(h * i, h * q_width)}


def count_parameters(arch: dict[str, Any]) -> int:
    """Total parameters: embeddings, layers (attention with GQA, MLP, 2 RMSNorms), final norm, lm_head."""
    layer = _layer_parameters(arch)
    embeddings = arch["vocab_size"] * arch["hidden_size"]
    lm_head = 0 if arch["tied_embeddings"] else embeddings
    per_layer = layer["attention"] + layer["mlp"] + layer["norms"]
    return embeddings + arch["num_layers"] * per_layer + arch["hidden_size"] + lm_head


def largest_layer_parameters(arch: dict[str, Any]) -> int:
    """Parameters of the largest single module, as DeepSpeed's `model_to_params` counts them."""
    return max(arch["vocab_size"] * arch["hidden_size"], _layer_parameters(arch)["largest_module"])


def local_hidden_size(name_or_path: str) -> int | None:
    """The hidden size from a local model folder's config.json, or None (no hub access)."""
    if not (Path(name_or_path).expanduser() / "config.json").is_file():
        return None
    return load_model_config(name_or_path)[0].get("hidden_size")
