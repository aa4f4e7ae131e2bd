"""Tests for llmft.models: tokenizers, task tokens, mean init, the tiny Llama and error messages.

The tiny model is built once per module (about a second); GGUF import and ZeRO-3 loading are in
tests/e2e/test_models_e2e.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import (
    AutoTokenizer,
)

from llmft.config import Config
from llmft.errors import LlmftError
from llmft.models.tokenizer import add_task_tokens, load_tokenizer
from llmft.tasks import get_task

MARKER_TASKS = ("viggo", "sql", "gsm8k")


def make_config(name_or_path: str | Path, task: str = "viggo", **model: object) -> Config:
    return Config.model_validate({
        "model": {"name_or_path": str(name_or_path), **model},
        "data": {"task": task, "train": f"sample:{task}@train"},
        "scaling": {"num_workers": 1}, "training": {"global_batch_size": 1},
        "source": "configs/test.yaml",
    })


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


def test_missing_tokenizer_names_its_own_key(tiny_dir: Path, tmp_path: Path) -> None:
    cfg = make_config(tiny_dir, tokenizer=str(tmp_path / "no-such-tokenizer"))
    with pytest.raises(LlmftError, match=r"model\.tokenizer = .*no-such-tokenizer.*no such folder"):
        load_tokenizer(cfg)
