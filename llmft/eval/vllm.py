"""`llmft eval`'s vllm engine: Ray Data's LLM batch inference (`ray.data.llm`) with vLLM.

GPU only, and optional (`pip install 'llmft[vllm]'`). llmft only builds the processor's config
from its own (model, dtype, tensor-parallel size and replicas from the eval plan, batch size,
accelerator type) and the sampling parameters from the task's stop marker; Ray Data runs and
manages the vLLM engines. Answers are cut from the generated token ids by the same code as the
other engines (`generate.finish`), so stop reasons mean the same.

Not run on this project's machines (no GPU): the unit tests cover the config built here.
"""

from __future__ import annotations

from typing import Any

from llmft.config import Config
from llmft.eval.generate import Answer, Stopping
from llmft.train.deepspeed import training_dtype


def accelerator_type(cfg: Config) -> str | None:
    """The GPU type the workers ask Ray for (`scaling.resources_per_worker` `accelerator_type:X`)."""
    prefix = "accelerator_type:"
    return next((key[len(prefix):] for key in cfg.scaling.resources_per_worker if key.startswith(prefix)), None)


def processor_config(cfg: Config, *, tensor_parallel_size: int, replicas: int, max_model_len: int):
    """Ray Data's `vLLMEngineProcessorConfig` for `cfg`. Prompts come formatted and tokenized by
    llmft's tokenizer (the token ids every engine sees), and answers are decoded by llmft."""
    from ray.data.llm import vLLMEngineProcessorConfig

    return vLLMEngineProcessorConfig(
        model_source=cfg.model.name_or_path,
        engine_kwargs={
            "tensor_parallel_size": tensor_parallel_size,
            "max_model_len": max_model_len,
            "dtype": training_dtype(cfg),
            "trust_remote_code": cfg.model.trust_remote_code,
            # Few-shot prompts share their long prefix.
            "enable_prefix_caching": True,
        },
        concurrency=replicas,
        batch_size=cfg.eval.batch_size,
        accelerator_type=accelerator_type(cfg),
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
    )


def sampling_params(stopping: Stopping, max_new_tokens: int) -> dict[str, Any]:
    """vLLM's greedy sampling, stopping where the other engines stop."""
    params: dict[str, Any] = {"temperature": 0.0, "max_tokens": max_new_tokens,
                              "stop_token_ids": stopping.token_ids, "skip_special_tokens": False}
    if stopping.marker and stopping.marker_id is None:  # a base model without the marker token
        params.update(stop=[stopping.marker], include_stop_str_in_output=True)
    return params


def generate_with_vllm(cfg: Config, prompts: list[str], *, stop_token: str | None, max_new_tokens: int,
                       tensor_parallel_size: int, replicas: int, max_model_len: int) -> list[Answer]:
    """Answers to `prompts`, in order, from `replicas` vLLM engines of `tensor_parallel_size` GPUs each."""
    import ray
    from ray.data.llm import build_processor
    from transformers import GenerationConfig

    from llmft.eval.generate import finish, generation_tokenizer, stopping_for

    tokenizer = generation_tokenizer(cfg)
    try:
        generation_config = GenerationConfig.from_pretrained(cfg.model.name_or_path)
    except OSError:  # a model folder without generation_config.json
        generation_config = None
    stopping = stopping_for(tokenizer, stop_token, generation_config)
    params = sampling_params(stopping, max_new_tokens)
    processor = build_processor(
        processor_config(cfg, tensor_parallel_size=tensor_parallel_size, replicas=replicas, max_model_len=max_model_len),
        preprocess=lambda row: {"index": row["index"], "tokenized_prompt": row["ids"], "sampling_params": params},
        postprocess=lambda row: {"index": row["index"], "generated_tokens": row["generated_tokens"]},
    )
    items = [{"index": i, "ids": ids} for i, ids in enumerate(tokenizer(prompts)["input_ids"])]
    rows = processor(ray.data.from_items(items)).take_all()
    answers = {int(row["index"]): finish([int(t) for t in row["generated_tokens"]], tokenizer, stopping) for row in rows}
    return [answers[i] for i in range(len(prompts))]
