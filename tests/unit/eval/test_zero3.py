"""The zero3 engine's DeepSpeed config: ZeRO-3 inference (no optimizer) with the run's parameter
offload, whatever stage and optimizer offload the training config uses."""

from __future__ import annotations

from llmft.config import load_config
from llmft.eval.zero3 import inference_deepspeed_config
from tests.support import REPO


def test_inference_config_is_zero3_without_an_optimizer():
    cfg = load_config(REPO / "configs/viggo/llama-2-70b.yaml", ["deepspeed.zero_stage=2",
                                                                "deepspeed.offload_optimizer=cpu"])
    ds = inference_deepspeed_config(cfg, hidden_size=8192)
    assert ds["zero_optimization"]["stage"] == 3 and "offload_optimizer" not in ds["zero_optimization"]
    assert "optimizer" not in ds  # DeepSpeed without an optimizer is ZeRO-Inference
    assert ds["bf16"]["enabled"]
    # DeepSpeed checks micro x accumulation x world == train batch even for inference.
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (1, 1, 32)


def test_parameter_offload_is_kept():
    ds = inference_deepspeed_config(load_config(REPO / "configs/viggo/llama-2-7b.yaml"), hidden_size=4096)
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
