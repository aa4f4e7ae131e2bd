"""The DeepSpeed JSON a run uses: generated from the llmft config, or a user's file with `auto`s filled."""

from __future__ import annotations

import json

import pytest

from llmft.config import Config
from llmft.errors import LlmftError
from llmft.train.deepspeed import build_deepspeed_config, training_dtype


def config(deepspeed: dict | None = None, **scaling) -> Config:
    return Config.model_validate({
        "model": {"name_or_path": "m"}, "data": {"task": "viggo", "train": "sample:viggo"},
        "training": {"micro_batch_size": 2, "global_batch_size": 8, "max_grad_norm": 0.5},
        "scaling": {"num_workers": 2, **scaling}, "deepspeed": deepspeed or {}})


def test_batch_sizes_and_clipping_come_from_the_llmft_config():
    ds = build_deepspeed_config(config())
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (2, 2, 8)
    assert ds["gradient_clipping"] == 0.5


def test_accumulation_follows_the_actual_world_size_and_universal_loading_is_opt_in():
    elastic = config(num_workers=(1, 2))
    assert build_deepspeed_config(elastic)["gradient_accumulation_steps"] == 2  # the most workers
    shrunk = build_deepspeed_config(elastic, world_size=1, load_universal=True)
    assert (shrunk["train_batch_size"], shrunk["gradient_accumulation_steps"]) == (8, 4)
    assert shrunk["checkpoint"] == {"load_universal": True}
    assert "checkpoint" not in build_deepspeed_config(elastic, world_size=1)


def test_precision_follows_the_device_unless_set():
    assert training_dtype(config()) == "float32"
    assert training_dtype(config(use_gpu=True)) == "bfloat16"
    ds = build_deepspeed_config(config(use_gpu=True))
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}


def test_zero3_buckets_are_sized_to_the_model_when_its_width_is_known():
    zero = build_deepspeed_config(config(), hidden_size=64)["zero_optimization"]
    assert zero["stage"] == 3 and zero["reduce_bucket_size"] == 64 * 64
    assert zero["stage3_param_persistence_threshold"] == 640
    unknown = build_deepspeed_config(config())["zero_optimization"]
    assert "reduce_bucket_size" not in unknown  # DeepSpeed's own defaults
    explicit = build_deepspeed_config(config({"reduce_bucket_size": 1000}), hidden_size=64)["zero_optimization"]
    assert explicit["reduce_bucket_size"] == 1000


def test_offloading_the_optimizer_uses_deepspeeds_optimizer():
    ds = build_deepspeed_config(config({"offload_optimizer": "cpu", "offload_params": "cpu"}))
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["optimizer"]["type"] == "AdamW"
    assert "optimizer" not in build_deepspeed_config(config())


def test_a_user_file_gets_its_autos_filled(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_batch_size": "auto", "zero_optimization": {"stage": "auto", "overlap_comm": True},
                                "bf16": {"enabled": "auto"}}))
    ds = build_deepspeed_config(config({"config_file": str(path)}))
    assert ds["train_batch_size"] == 8 and ds["gradient_accumulation_steps"] == 2
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": True}
    assert ds["bf16"] == {"enabled": False}


@pytest.mark.parametrize("content, message", [
    ({"train_micro_batch_size_per_gpu": 3}, "train_micro_batch_size_per_gpu"),
    ({"bf16": {"enabled": True}}, "bf16.enabled"),
    ("{not json", "invalid JSON at line 1"),
    ([1, 2], "must be a JSON object"),
])
def test_a_user_file_that_contradicts_the_config_is_refused(tmp_path, content, message):
    path = tmp_path / "ds.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(LlmftError, match=message) as error:
        build_deepspeed_config(config({"config_file": str(path)}))
    assert str(path) in str(error.value)


def test_a_missing_user_file_is_named(tmp_path):
    with pytest.raises(LlmftError, match="does not exist"):
        build_deepspeed_config(config({"config_file": str(tmp_path / "nope.json")}))
