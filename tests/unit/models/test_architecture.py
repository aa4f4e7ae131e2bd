"""A model's architecture from config.json: parameter counts of every family against the published
checkpoints, and the shipped Llama-2 configs.

What these catch: a count that assumes Llama's layout (it would miss Qwen2's attention biases,
Gemma's four norms per layer, Qwen3's and Gemma-3's q/k norms, or count tied embeddings twice),
which would make `llmft plan` misjudge memory for those families."""

from __future__ import annotations

import json

import pytest

from llmft.errors import LlmftError
from llmft.models.architecture import (
    SHIPPED_CONFIGS_DIR,
    architecture,
    count_parameters,
    largest_layer_parameters,
    load_model_config,
)
from tests.support import MODEL_CONFIG_FIXTURES, fixture_model_config

SIZES = ("7b", "13b", "70b")



@pytest.mark.parametrize("name, expected", [
    ("llama-2-7b", 6.74e9), ("llama-2-13b", 13.0e9), ("llama-2-70b", 68.98e9), ("smollm2-135m", 134.5e6),
])
def test_parameter_counts_match_the_published_models(name, expected):
    assert count_parameters(architecture(fixture_model_config(name))) == pytest.approx(expected, rel=0.01)


# The parameter counts of the released checkpoints (their safetensors), config.json in tests/fixtures.
@pytest.mark.parametrize("name, expected", [
    ("llama-2-7b", 6_738_415_616), ("mistral-7b", 7_241_732_096), ("qwen2.5-0.5b", 494_032_768),
    ("qwen3-8b", 8_190_735_360), ("qwen3-0.6b", 596_049_920), ("gemma-2-9b", 9_241_705_984), ("gemma-3-1b", 999_885_952),
    ("phi-3-mini-4k", 3_821_079_552),
])
def test_parameter_count_is_exact_for_every_family(name, expected):
    assert count_parameters(architecture(fixture_model_config(name))) == expected


def test_tied_embeddings_count_once():
    smol = fixture_model_config("smollm2-135m")
    untied = count_parameters(architecture({**smol, "tie_word_embeddings": False}))
    assert untied - count_parameters(architecture(smol)) == 49152 * 576


def test_a_model_type_transformers_does_not_ship_is_a_user_error():
    with pytest.raises(LlmftError, match="not one transformers ships"):
        architecture({**fixture_model_config("mistral-7b"), "model_type": "my-remote-arch"})


def test_largest_layer_is_the_embedding_for_llama_2():
    assert largest_layer_parameters(architecture(fixture_model_config("llama-2-70b"))) == 32000 * 8192


@pytest.mark.parametrize("size", SIZES)
def test_shipped_model_configs_match_the_fixtures(size):
    ours = json.loads((SHIPPED_CONFIGS_DIR / f"llama-2-{size}.json").read_text())
    assert architecture(ours) == architecture(fixture_model_config(f"llama-2-{size}"))


def test_model_config_comes_from_a_local_folder_or_the_shipped_files(tmp_path):
    config, origin = load_model_config(str(MODEL_CONFIG_FIXTURES / "smollm2-135m"))
    assert config["hidden_size"] == 576 and origin.endswith("config.json")
    config, origin = load_model_config("meta-llama/Llama-2-70b-hf")
    assert config["num_key_value_heads"] == 8 and "shipped" in origin
    with pytest.raises(LlmftError, match="without config.json"):
        load_model_config(str(tmp_path))
    with pytest.raises(LlmftError, match="local folder"):
        load_model_config("no-such-folder/nested/model")
