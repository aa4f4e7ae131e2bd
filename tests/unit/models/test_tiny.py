"""`llmft models make-tiny`: deterministic, replaces its folder, reloads with the Auto classes, and
its tokenizer covers the sample data."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaForCausalLM,
)

from llmft.data.samples import generate_rows
from llmft.models.tiny import make_tiny_llama

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
