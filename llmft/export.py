"""`llmft export`: a checkpoint consolidated into a Hugging Face model folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from llmft.checkpoint import DEEPSPEED_TAG, read_state
from llmft.config import Config
from llmft.errors import LlmftError
from llmft.files import atomic_folder


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Consolidate a checkpoint into a Hugging Face model folder (safetensors, config, tokenizer).

    DeepSpeed merges the ZeRO shards on the CPU one output shard at a time, so neither a GPU nor
    the host ever holds a second full copy of the model. Weights are written in the training dtype.
    """
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from llmft.tasks import get_task
    from llmft.train.deepspeed import training_dtype

    folder = Path(checkpoint)
    state = read_state(folder)
    out = Path(out)
    dtype = getattr(torch, training_dtype(Config.model_validate(state["config"])))
    with atomic_folder(out) as tmp:
        config = AutoConfig.from_pretrained(folder / "model")
        _write_weights(folder, tmp, dtype, tied=bool(getattr(config, "tie_word_embeddings", False)))
        config.dtype = dtype
        config.save_pretrained(tmp)
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        tokenizer.save_pretrained(tmp)
        stop_token = get_task(state["task"]).stop_token or tokenizer.eos_token
        GenerationConfig(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.convert_tokens_to_ids(stop_token), do_sample=False).save_pretrained(tmp)
        (tmp / "llmft_export.json").write_text(json.dumps(
            {"checkpoint": str(folder), "position": state["position"], "task": state["task"],
             "stop_token": stop_token, "base_model": state["model"]}, indent=2))
    return out


def _write_weights(folder: Path, out: Path, dtype: torch.dtype, tied: bool) -> None:
    from safetensors.torch import save_file

    ds_dir = folder / DEEPSPEED_TAG
    if any(ds_dir.glob("*optim_states.pt")):  # ZeRO 1-3: merge the fp32 master weights' shards
        _write_zero_weights(folder, out, dtype, tied)
        return
    model_states = ds_dir / "mp_rank_00_model_states.pt"
    if not model_states.is_file():
        raise LlmftError(f"Checkpoint {folder} has no DeepSpeed model states under {DEEPSPEED_TAG}/; it may be corrupt.")
    weights = torch.load(model_states, map_location="cpu", weights_only=False)["module"]
    if tied:  # safetensors refuses shared tensors; transformers re-ties lm_head on load
        weights.pop("lm_head.weight", None)
    save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})


def _write_zero_weights(folder: Path, out: Path, dtype: torch.dtype, tied: bool) -> None:
    """DeepSpeed's lazy merge, written one 5 GB safetensors shard at a time (as its own
    `convert_zero_checkpoint_to_state_dict`, which cannot drop a tied lm_head)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint, to_torch_tensor
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    state = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=DEEPSPEED_TAG, lazy_mode=True)
    if tied:
        state.pop("lm_head.weight", None)
    split = split_torch_state_dict_into_shards(to_torch_tensor(state, return_empty_tensor=True, dtype=dtype),
                                               filename_pattern="model{suffix}.safetensors", max_shard_size="5GB")
    for shard_file, names in split.filename_to_tensors.items():
        shard = to_torch_tensor({name: state.pop(name) for name in names}, dtype=dtype)
        save_file({k: v.contiguous() for k, v in shard.items()}, str(out / shard_file), metadata={"format": "pt"})
    if split.is_sharded:
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": split.metadata, "weight_map": split.tensor_to_filename}, indent=2))
