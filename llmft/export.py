"""`llmft export`: a checkpoint consolidated into a Hugging Face model folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from llmft import storage
from llmft.checkpoint import DEEPSPEED_TAG, read_state
from llmft.config import Config
from llmft.errors import LlmftError

EXPORT_FILE = "llmft_export.json"  # written last: an export folder (or prefix in a bucket) without it is incomplete


def export_checkpoint(checkpoint: str | os.PathLike, out: str) -> str:
    """Consolidate a checkpoint into a Hugging Face model folder (safetensors, config, tokenizer).

    Both may be local folders or storage URIs. DeepSpeed merges the ZeRO shards on the CPU one
    output shard at a time, so neither a GPU nor the host ever holds a second full copy of the
    model. Weights are written in the training dtype.
    """
    state = read_state(checkpoint)  # a broken checkpoint fails here, before anything is written
    storage.check_reachable(str(out), "--out")
    with storage.local_folder(str(checkpoint)) as folder, storage.output_folder(str(out), last=(EXPORT_FILE,)) as tmp:
        _export(folder, state, tmp, storage.shown(str(checkpoint)))
    return str(out)


def _export(folder: Path, state: dict, out: Path, source: str) -> None:
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from llmft.models.tokenizer import task_stop_token
    from llmft.tasks import get_task
    from llmft.train.deepspeed import training_dtype

    dtype = getattr(torch, training_dtype(Config.model_validate(state["config"])))
    config = AutoConfig.from_pretrained(folder / "model")
    _write_weights(folder, out, dtype, tied=bool(getattr(config, "tie_word_embeddings", False)))
    config.dtype = dtype
    config.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    tokenizer.save_pretrained(out)
    stop_token = task_stop_token(tokenizer, get_task(state["task"])) or tokenizer.eos_token
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                     eos_token_id=tokenizer.convert_tokens_to_ids(stop_token), do_sample=False).save_pretrained(out)
    (out / EXPORT_FILE).write_text(json.dumps(
        {"checkpoint": source, "position": state["position"], "task": state["task"],
         "stop_token": stop_token, "base_model": state["model"]}, indent=2))


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
