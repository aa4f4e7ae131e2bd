"""`llmft models make-tiny`: deterministic, replaces its folder, reloads with the Auto classes, its
tokenizer covers the sample data, and a tiny model of each architecture family keeps what makes
the family (GQA, tied embeddings, sliding windows, layer types, its tokenizer's BOS and markers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from llmft.data.samples import generate_rows
from llmft.errors import LlmftError
from llmft.models.tiny import (
    HEAD_DIM,
    SLIDING_WINDOW,
    make_tiny_llama,
    make_tiny_model,
    read_tiny_marker,
    tiny_config,
)
from tests.support.tiny_tokenizer import make_tokenizer as make_test_tokenizer

MARKER_TASKS = ("viggo", "sql", "gsm8k")


def test_make_tiny_llama_is_deterministic(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = make_tiny_llama(tmp_path / "again")
    other_seed = make_tiny_llama(tmp_path / "seed1", seed=1)
    first, second = load_file(tiny_model_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert (tiny_model_dir / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
    third = load_file(other_seed / "model.safetensors")
    assert not torch.equal(first["model.embed_tokens.weight"], third["model.embed_tokens.weight"])
    assert not list(tmp_path.glob(".*tmp*")), "temporary folders must not be left behind"


def test_make_tiny_llama_replaces_an_existing_folder(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    make_tiny_llama(out, hidden_size=32, vocab_size=512)
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 512
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_tiny_llama_reloads_with_auto_classes(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.vocab_size == len(tokenizer) == 2048
    assert not model.config.tie_word_embeddings  # as Llama-2
    # Llama-2 layout: <unk> <s> </s> at 0 1 2, BOS prepended, no EOS appended.
    assert (tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token) == ("<unk>", "<s>", "</s>")
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    ids = tokenizer("SELECT 1")["input_ids"]
    assert ids[0] == 1 and ids[-1] != 2
    logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 2048) and torch.isfinite(logits).all()


def test_tiny_tokenizer_covers_digits_sql_and_the_samples(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # Digits are single pieces, as in Llama-2 (arithmetic answers tokenize digit by digit).
    assert tokenizer.tokenize("1234567890")[1:] == list("1234567890")
    for keyword in ("SELECT", "FROM", "WHERE", "COUNT", "CREATE", "TABLE"):
        assert len(tokenizer.tokenize(f" {keyword}")) <= 2, keyword
    total_chars = total_tokens = 0
    for task in MARKER_TASKS:
        for row in generate_rows(task, "valid")[:50]:
            for text in (v for k, v in row.items() if isinstance(v, str) and k != "gem_id"):
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                assert tokenizer.unk_token_id not in ids
                assert tokenizer.decode(ids) == text
                total_chars, total_tokens = total_chars + len(text), total_tokens + len(ids)
    assert total_chars / total_tokens > 2.5  # a real vocabulary, not bytes and single letters
    # Byte fallback: text outside the training data still round-trips without <unk>.
    ids = tokenizer("naïve café ☃ 日本", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == "naïve café ☃ 日本"


# ---------------------------------------------------------------- other architecture families

# Family -> (BOS added, eos token, pad token, a chat marker), as the released tokenizers have them.
FAMILIES = {
    "llama": (True, "</s>", None, None),
    "mistral": (True, "</s>", None, None),
    "mixtral": (True, "</s>", None, None),
    "phi3": (False, "<|endoftext|>", "<|endoftext|>", "<|assistant|>"),
    "gemma": (True, "<eos>", "<pad>", "<start_of_turn>"),
    "gemma2": (True, "<eos>", "<pad>", "<start_of_turn>"),
    "gemma3_text": (True, "<eos>", "<pad>", "<end_of_turn>"),
    "qwen2": (False, "<|endoftext|>", "<|endoftext|>", "<|im_start|>"),
    "qwen3": (False, "<|endoftext|>", "<|endoftext|>", "<|im_end|>"),
}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {like: make_tiny_model(root / like, like) for like in FAMILIES}


@pytest.mark.parametrize("like", FAMILIES)
def test_tiny_model_of_each_family_keeps_its_architecture(family_dirs, like) -> None:
    target = AutoConfig.for_model(like)
    model = AutoModelForCausalLM.from_pretrained(family_dirs[like])
    tokenizer = AutoTokenizer.from_pretrained(family_dirs[like])
    config = model.config
    assert config.model_type == target.model_type
    assert type(model).__name__ == MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[target.model_type]
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert config.vocab_size == len(tokenizer)
    # Grouped-query attention stays grouped; tied embeddings stay tied.
    assert (config.num_key_value_heads < config.num_attention_heads) == (
        target.num_key_value_heads < target.num_attention_heads)
    assert config.tie_word_embeddings == target.tie_word_embeddings
    if getattr(target, "sliding_window", None):
        assert 0 < config.sliding_window <= SLIDING_WINDOW
    if getattr(target, "layer_types", None):
        assert set(config.layer_types) == set(target.layer_types) and len(config.layer_types) == 2
    # The family's tokenizer behaviour: BOS or none, its special ids in the model config, chat markers.
    adds_bos, eos, pad, marker = FAMILIES[like]
    ids = tokenizer("SELECT name FROM head")["input_ids"]
    assert (tokenizer.bos_token is not None and ids[0] == tokenizer.bos_token_id) == adds_bos
    assert (config.bos_token_id, config.eos_token_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert (tokenizer.eos_token, tokenizer.pad_token) == (eos, pad)
    if marker:
        assert len(tokenizer(marker, add_special_tokens=False)["input_ids"]) == 1, marker
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True)
        assert marker in text and "hi" in text
    logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tokenizer)) and torch.isfinite(logits).all()


def test_byte_level_and_gemma_tokenizers_are_deterministic(family_dirs, tmp_path) -> None:
    for like in ("qwen3", "gemma2"):
        again = make_tiny_model(tmp_path / like, like)
        for name in ("tokenizer.json", "model.safetensors", "config.json"):
            assert (again / name).read_bytes() == (family_dirs[like] / name).read_bytes(), (like, name)


def test_tiny_model_like_a_shipped_llama_2_config_keeps_gqa_and_its_settings(tmp_path) -> None:
    out = make_tiny_model(tmp_path / "70b", "meta-llama/Llama-2-70b-hf")
    config = json.loads((out / "config.json").read_text())
    assert config["num_attention_heads"] == 4 and config["num_key_value_heads"] == 1  # 64 / 8 in the 70B
    assert config["rms_norm_eps"] == 1e-5 and config["max_position_embeddings"] == 4096
    marker = read_tiny_marker(out)
    assert marker["config_from"] == "llmft's shipped llama-2-70b.json" and marker["like"] == "meta-llama/Llama-2-70b-hf"


def test_tiny_config_cuts_per_frequency_rope_factors_and_keeps_every_layer_type() -> None:
    tokenizer = make_test_tokenizer()
    phi3_128k = {**AutoConfig.for_model("phi3").to_dict(), "max_position_embeddings": 131072,
                 "original_max_position_embeddings": 4096,
                 "rope_scaling": {"type": "longrope", "rope_type": "longrope",
                                  "short_factor": [1.0] * 48, "long_factor": [2.0] * 48}}
    config = tiny_config(phi3_128k, tokenizer)
    rope = config.rope_parameters
    assert len(rope["short_factor"]) == len(rope["long_factor"]) == HEAD_DIM // 2
    model = AutoModelForCausalLM.from_config(config)
    assert torch.isfinite(model(torch.tensor([[1, 5, 9]])).logits).all()

    gemma3 = AutoConfig.for_model("gemma3_text").to_dict()  # 5 sliding layers, then 1 full
    assert gemma3["layer_types"][:2] == ["sliding_attention"] * 2
    assert tiny_config(gemma3, tokenizer).layer_types == ["sliding_attention", "full_attention"]
    with pytest.raises(LlmftError, match="at least 2 layers"):
        tiny_config(gemma3, tokenizer, num_layers=1)


def test_tokenizer_from_copies_a_tokenizer_with_its_chat_template(family_dirs, tmp_path) -> None:
    out = make_tiny_model(tmp_path / "llama-with-chatml", "llama", tokenizer_from=str(family_dirs["qwen3"]))
    tokenizer = AutoTokenizer.from_pretrained(out)
    source = AutoTokenizer.from_pretrained(family_dirs["qwen3"])
    assert tokenizer.get_vocab() == source.get_vocab() and tokenizer.chat_template == source.chat_template
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert "copied from" in read_tiny_marker(out)["tokenizer"]


def test_unknown_targets_are_user_errors(tmp_path) -> None:
    with pytest.raises(LlmftError, match="not one transformers ships"):
        tiny_config({"model_type": "my-remote-arch", "hidden_size": 8}, None)
    with pytest.raises(LlmftError, match="multiple of 16"):
        make_tiny_model(tmp_path / "x", "llama", hidden_size=40)
