"""The model to train: weights in the training dtype, embeddings grown for the task's tokens, and
partitioned while it loads under DeepSpeed ZeRO-3."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from llmft.errors import LlmftError
from llmft.models.source import check_model_folder, model_source, unloadable_message
from llmft.tasks import get_task

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llmft.config import Config


def load_model(cfg: Config, tokenizer: PreTrainedTokenizerBase, ds_config: dict | None = None,
               dtype: torch.dtype | str | None = None) -> PreTrainedModel:
    """The causal LM of `cfg.model`, ready for training with `tokenizer` (task tokens added).

    - Under ZeRO-3 (`ds_config` with stage 3) the weights are partitioned while they load, so no
      process ever holds the whole model. This needs transformers' `HfDeepSpeedConfig` to stay
      alive while the model is used; it is kept on the model as `model.llmft_hf_ds_config`.
      A process should load at most one ZeRO-3 model: transformers keeps that config globally.
    - The embeddings grow to `len(tokenizer)` when it has more tokens than the model; the new
      rows (input and, if untied, output embeddings) start at the mean of the existing rows and
      are partitioned like the rest under ZeRO-3. A model that already has the tokens (e.g. an
      exported fine-tune) is left as it is. How new rows start: `init_new_embeddings`.
    - `dtype` defaults to the training dtype of the config (float32 on CPU).
    """
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    from llmft.train.deepspeed import training_dtype, zero_stage_of

    source = model_source(cfg, "model.name_or_path")
    if Path(source).is_dir():
        check_model_folder(cfg, Path(source))
    if dtype is None:
        dtype = training_dtype(cfg)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)

    hf_ds_config = None
    if ds_config is not None and zero_stage_of(ds_config) == 3:
        from transformers.integrations import HfDeepSpeedConfig

        # Must exist before from_pretrained: transformers then builds the model under
        # deepspeed.zero.Init and loads each weight straight into its partition.
        hf_ds_config = HfDeepSpeedConfig(ds_config)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation=cfg.model.attn_implementation,
            trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a truncated or corrupt weights file
        if "does not support an attention implementation" in str(exc):
            # e.g. Gemma-2: transformers has no sdpa kernel with its attention soft-capping.
            where = f" (in {cfg.source})" if cfg.source else ""
            raise LlmftError(f"model.attn_implementation = {cfg.model.attn_implementation!r}{where}: "
                             f"transformers cannot run this model's attention that way ({str(exc).split(' yet.')[0]}). "
                             "Set model.attn_implementation: eager (or flash_attention_2 on GPU).") from None
        raise LlmftError(unloadable_message(cfg, "model.name_or_path", source, "model", exc)) from None
    model.llmft_hf_ds_config = hf_ds_config

    num_old_tokens = model.config.get_text_config().vocab_size
    if len(tokenizer) > num_old_tokens:
        # mean_resizing=False: transformers' own mean init samples from a multivariate normal
        # (a covariance over hidden x hidden, slow at 8k hidden); we set the plain mean instead.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        task = get_task(cfg.data.task)
        stop = task.stop_token if cfg.model.stop_token_init == "eos" else None
        init_new_embeddings(model, tokenizer, num_old_tokens, method=cfg.model.new_token_init, stop_token=stop)
        _partition_plain_parameters(model)
    if cfg.model.gradient_checkpointing:
        # Non-reentrant: works with inputs that need no grad and with ZeRO-3's parameter hooks.
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # the KV cache is useless in training and clashes with recompute
    return model


def init_new_embeddings(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, num_old_tokens: int, *,
                        method: str = "mean", stop_token: str | None = None) -> None:
    """Starting values of the embedding rows `num_old_tokens:` (the task's new tokens).

    Applies to the input embeddings and, when they are not tied to them, the output embeddings.
    - `method="mean"`: every new row is the mean of the existing rows, an "average" token whose
      logits do not dominate generation and after which inputs stay in distribution
      (https://nlp.stanford.edu/~johnhew/vocab-expansion.html).
    - `method="text"`: each new row is the mean of the rows of the pieces its text splits into
      without it (`<END_MR>` -> `<`, `END`, `_`, `MR`, `>`), so it starts near what it looks like.
    - `stop_token`: that token's rows are copies of the EOS rows instead. A fine-tuned model must
      learn to end its answer with the task's stop token; from the mean it competes with the
      strongly trained EOS (a chat model's end of turn) and loses within a short fine-tune, so the
      model keeps ending with EOS. Starting as EOS, it is what the model already emits there.
    Works on partitioned ZeRO-3 parameters (those with `ds_id`) by gathering them first; every
    process must call it then, as for any ZeRO-3 collective.
    """
    import torch

    new_ids = range(num_old_tokens, len(tokenizer))
    pieces = {i: tokenizer(tokenizer.convert_ids_to_tokens(i), add_special_tokens=False,
                           split_special_tokens=True)["input_ids"] for i in new_ids} if method == "text" else {}
    stop_id = tokenizer.convert_tokens_to_ids(stop_token) if stop_token else None
    copy_eos = stop_id in new_ids and tokenizer.eos_token_id is not None and tokenizer.eos_token_id < num_old_tokens
    weights = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not weights[0]:
        weights.append(output.weight)
    with _gathered(weights), torch.no_grad():
        for weight in weights:
            if weight.shape[0] <= num_old_tokens:
                continue
            weight[num_old_tokens:] = weight[:num_old_tokens].float().mean(dim=0).to(weight.dtype)
            for i, ids in pieces.items():
                known = [j for j in ids if j < num_old_tokens]
                if known:
                    weight[i] = weight[known].float().mean(dim=0).to(weight.dtype)
            if copy_eos:
                weight[stop_id] = weight[tokenizer.eos_token_id]


def _partition_plain_parameters(model: PreTrainedModel) -> None:
    """Partition parameters that are not yet ZeRO-3 parameters, when the rest of the model is.

    Under ZeRO-3, transformers builds resized embeddings as ordinary (whole) parameters; without
    this they would stay whole on every process until `deepspeed.initialize`. Rank 0's values are
    broadcast, so every process starts from the same new rows.
    """
    params = list(model.parameters())
    zero = [p for p in params if hasattr(p, "ds_id")]
    plain = [p for p in params if not hasattr(p, "ds_id")]
    if zero and plain:
        zero[0].convert_to_zero_parameters(param_list=plain)


def _gathered(params: list) -> contextlib.AbstractContextManager:
    """Gather ZeRO-3 partitioned parameters for modification (rank 0's values are kept)."""
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)

