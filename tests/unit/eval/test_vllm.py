"""The vllm engine's plumbing: Ray Data's processor config and vLLM's sampling parameters built
from llmft's config and the task's stop marker (vLLM itself needs GPUs and is not run here)."""

from __future__ import annotations

from llmft.config import load_config
from llmft.eval.generate import stopping_for
from llmft.eval.vllm import accelerator_type, processor_config, sampling_params
from tests.support import REPO
from tests.support.tiny_tokenizer import make_tokenizer


def test_processor_config_comes_from_llmfts_config():
    cfg = load_config(REPO / "configs/viggo/llama-2-70b.yaml", [
        "eval.batch_size=32", "scaling.resources_per_worker={accelerator_type:A10G: 0.01}"])
    config = processor_config(cfg, tensor_parallel_size=8, replicas=4, max_model_len=700)
    assert config.model_source == "meta-llama/Llama-2-70b-hf"
    assert config.engine_kwargs["tensor_parallel_size"] == 8 and config.engine_kwargs["max_model_len"] == 700
    assert config.engine_kwargs["dtype"] == "bfloat16" and config.engine_kwargs["trust_remote_code"] is False
    assert config.concurrency == 4 and config.batch_size == 32 and config.accelerator_type == "A10G"
    # llmft formats, tokenizes and decodes itself: the prompt is the task's, never a chat template.
    assert not config.chat_template_stage and not config.tokenize_stage and not config.detokenize_stage


def test_accelerator_type_only_when_asked_for():
    assert accelerator_type(load_config(REPO / "configs/viggo/llama-2-7b.yaml")) is None


def test_sampling_is_greedy_and_stops_at_the_task_marker():
    tokenizer = make_tokenizer()
    stopping = stopping_for(tokenizer, "<END_MR>")
    params = sampling_params(stopping, 40)
    assert params["temperature"] == 0.0 and params["max_tokens"] == 40 and not params["skip_special_tokens"]
    assert params["stop_token_ids"] == [tokenizer.convert_tokens_to_ids("<END_MR>"), tokenizer.eos_token_id]
    assert "stop" not in params


def test_a_marker_that_is_not_a_token_is_a_stop_string():
    plain = make_tokenizer(special_tokens=())
    params = sampling_params(stopping_for(plain, "<END_MR>"), 40)
    assert params["stop"] == ["<END_MR>"] and params["include_stop_str_in_output"]
    assert params["stop_token_ids"] == [plain.eos_token_id]
