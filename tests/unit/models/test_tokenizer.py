"""The run's tokenizer: task tokens added as single special tokens, text after them tokenized as
bare text, and the pad-token policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import (
    AutoTokenizer,
)

from llmft.errors import LlmftError
from llmft.models.tokenizer import add_task_tokens, load_tokenizer
from llmft.tasks import get_task
from tests.support import model_config

MARKER_TASKS = ("viggo", "sql", "gsm8k")


@pytest.mark.parametrize("task_name", MARKER_TASKS)
def test_task_tokens_are_added_as_single_special_tokens(tiny_model_dir: Path, task_name: str) -> None:
    cfg = model_config(tiny_model_dir, task_name)
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


def test_text_after_a_task_token_tokenizes_as_bare_text(tiny_model_dir: Path, tmp_path: Path) -> None:
    # The Llama-2 "legacy" behaviour: `<START_Q>word` must give `word` the same tokens as bare
    # `word`, also after the tokenizer (with its added tokens) is saved and reloaded.
    tokenizer = load_tokenizer(model_config(tiny_model_dir, "gsm8k"))
    add_task_tokens(tokenizer, get_task("gsm8k"))
    tokenizer.save_pretrained(tmp_path)
    for tok in (tokenizer, AutoTokenizer.from_pretrained(tmp_path)):
        for word in ("How many", "SELECT name", "12"):
            bare = tok(word, add_special_tokens=False)["input_ids"]
            marked = tok(f"<START_Q>{word}", add_special_tokens=False)["input_ids"]
            assert marked == [tok.convert_tokens_to_ids("<START_Q>"), *bare], word


def test_pad_token_reuses_unk_without_growing_the_vocabulary(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(model_config(tiny_model_dir))
    assert tokenizer.pad_token is None  # as Llama-2
    added = add_task_tokens(tokenizer, get_task("prompt_completion"))
    assert added == 0 and len(tokenizer) == 2048
    assert tokenizer.pad_token == "<unk>" and tokenizer.pad_token_id == tokenizer.unk_token_id
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    batch = tokenizer(["a", "a longer text"], padding=True)
    assert batch["input_ids"][0].count(tokenizer.pad_token_id) > 0


def test_pad_token_falls_back_to_eos_without_unk(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(model_config(tiny_model_dir))
    tokenizer.unk_token = None
    add_task_tokens(tokenizer, get_task("viggo"))
    assert tokenizer.pad_token == "</s>"


def test_existing_pad_token_is_kept(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(model_config(tiny_model_dir))
    tokenizer.pad_token = "<s>"
    add_task_tokens(tokenizer, get_task("viggo"))
    assert tokenizer.pad_token == "<s>"


def test_missing_tokenizer_names_its_own_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = model_config(tiny_model_dir, tokenizer=str(tmp_path / "no-such-tokenizer"))
    with pytest.raises(LlmftError, match=r"model\.tokenizer = .*no-such-tokenizer.*no such folder"):
        load_tokenizer(cfg)


@pytest.mark.parametrize("style, marker", [("qwen", "<|im_end|>"), ("gemma", "<end_of_turn>"), ("phi3", "<|end|>")])
def test_a_chat_answer_stops_at_the_end_of_turn_marker_of_the_tokenizers_own_template(style, marker) -> None:
    """What this catches: chat over Gemma's or Phi-3's template generating past the end of its turn
    (llmft's own `<|im_end|>` is not in those templates) and an export whose generation config stops
    at a token the tokenizer does not have."""
    from llmft.data.tokenize import formatter_for
    from llmft.models.tiny import TOKENIZER_STYLES, make_tokenizer
    from llmft.models.tokenizer import task_stop_token

    tokenizer = make_tokenizer(TOKENIZER_STYLES[style], 512, 2048)
    chat, viggo = get_task("chat"), get_task("viggo")
    add_task_tokens(tokenizer, chat)
    assert task_stop_token(tokenizer, chat) == marker
    assert task_stop_token(tokenizer, viggo) == "<END_MR>"  # other tasks keep their own marker
    # The stop marker is what training taught to end the answer: the end of its trained segment.
    example = formatter_for(chat, tokenizer)({"messages": [{"role": "user", "content": "hi"},
                                                           {"role": "assistant", "content": "hello"}]})
    trained = [segment.text for segment in example.segments if segment.trained]
    assert trained[-1].startswith("hello" + marker), trained


def test_without_a_chat_template_chat_stops_at_llmfts_own_marker(tiny_model_dir: Path) -> None:
    from llmft.models.tokenizer import task_stop_token

    tokenizer = load_tokenizer(model_config(tiny_model_dir, "chat"))
    assert tokenizer.chat_template is None
    assert task_stop_token(tokenizer, get_task("chat")) == "<|im_end|>"
