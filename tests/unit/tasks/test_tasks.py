"""Each task's formatter: exact texts, prompt/reference, trained segments, malformed rows."""

from __future__ import annotations

import pytest

from llmft.errors import LlmftError
from llmft.tasks import TASKS, get_task, special_tokens_for
from llmft.tasks.chat import builtin_render, format_with_render


def _text(example):
    return "".join(s.text for s in example.segments)


def _trained(example):
    return "".join(s.text for s in example.segments if s.trained)


def test_registry_has_the_five_tasks_and_rejects_unknown_names():
    assert set(TASKS) == {"viggo", "sql", "gsm8k", "prompt_completion", "chat"}
    with pytest.raises(LlmftError, match="Known tasks"):
        get_task("vigo")


def test_viggo_format():
    row = {"target": "I loved Iron Tide.", "meaning_representation": "give_opinion(name[Iron Tide], rating[excellent])"}
    ex = get_task("viggo").format(row)
    assert _text(ex) == ("<START_TEXT>I loved Iron Tide.<END_TEXT><START_MR>"
                         "give_opinion(name[Iron Tide], rating[excellent])<END_MR>")
    assert ex.prompt == "<START_TEXT>I loved Iron Tide.<END_TEXT><START_MR>"
    assert ex.reference == row["meaning_representation"]
    assert _trained(ex) == row["meaning_representation"] + "<END_MR>"
    assert get_task("viggo").stop_token == "<END_MR>"


def test_sql_format():
    row = {"question": "How many?", "context": "CREATE TABLE t (a VARCHAR)", "answer": "SELECT COUNT(*) FROM t"}
    ex = get_task("sql").format(row)
    assert _text(ex) == ("<START_Q>How many?<END_Q><START_C>CREATE TABLE t (a VARCHAR)<END_C>"
                         "<START_A>SELECT COUNT(*) FROM t<END_A>")
    assert ex.prompt.endswith("<END_C><START_A>") and ex.reference == row["answer"]
    assert _trained(ex) == "SELECT COUNT(*) FROM t<END_A>"


def test_gsm8k_format():
    row = {"question": "2 apples and 3 more?", "answer": "2+3 = <<2+3=5>>5\n#### 5"}
    ex = get_task("gsm8k").format(row)
    assert _text(ex) == "<START_Q>2 apples and 3 more?<END_Q><START_A>2+3 = <<2+3=5>>5\n#### 5<END_A>"
    assert ex.prompt == "<START_Q>2 apples and 3 more?<END_Q><START_A>"
    assert ex.reference == row["answer"]


@pytest.mark.parametrize("name", ["viggo", "sql", "gsm8k"])
def test_special_token_tasks_train_exactly_the_completion_and_its_stop_token(name):
    task = get_task(name)
    row = {f: f"value of {f}" for f in task.required_fields}
    ex = task.format(row)
    assert _text(ex).startswith(ex.prompt)
    assert ex.prompt.endswith(task.special_tokens[-2])  # the completion's start marker
    assert _trained(ex) == ex.reference + task.stop_token
    assert all(t in task.special_tokens for t in (task.stop_token,))


@pytest.mark.parametrize("row, message", [
    ({"target": "x"}, "missing field `meaning_representation`"),
    ({"target": "x", "meaning_representation": 3}, "must be a string"),
    ({"target": "x", "meaning_representation": "  "}, "is empty"),
])
def test_malformed_rows_raise_value_errors_naming_the_field(row, message):
    with pytest.raises(ValueError, match=message):
        get_task("viggo").format(row)


def test_prompt_completion_format():
    task = get_task("prompt_completion")
    ex = task.format({"prompt": "Q: 2+2\n\n###\n\n", "completion": " 4"})
    assert [(s.text, s.trained) for s in ex.segments] == [("Q: 2+2\n\n###\n\n", False), (" 4", True)]
    assert ex.prompt == "Q: 2+2\n\n###\n\n" and ex.reference == " 4"
    assert task.stop_token is None  # the tokenizer's EOS
    with pytest.raises(ValueError, match="completion"):
        task.format({"prompt": "x", "completion": ""})


CONVERSATION = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!", "weight": 0},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]}


def test_chat_builtin_template_trains_only_weighted_assistant_turns():
    ex = get_task("chat").format(CONVERSATION)
    assert _text(ex) == builtin_render(CONVERSATION["messages"], False)
    assert _trained(ex) == "4<|im_end|>"
    assert [s.text for s in ex.segments if not s.trained][1] == "Hello!<|im_end|>"  # weight 0: context only
    assert ex.prompt.endswith("<|im_start|>assistant\n") and ex.reference == "4"
    assert _text(ex).startswith(ex.prompt)


def test_chat_all_assistant_turns_trained_without_weights():
    messages = [{k: v for k, v in m.items() if k != "weight"} for m in CONVERSATION["messages"]]
    ex = get_task("chat").format({"messages": messages})
    assert _trained(ex) == "Hello!<|im_end|>4<|im_end|>"


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "hi"}], "no assistant message"),
    ([{"role": "robot", "content": "hi"}], "role must be one of"),
    ([{"role": "assistant", "content": "x", "weight": 2}], "weight must be 0 or 1"),
    ([{"role": "assistant", "content": 5}], "content must be a string"),
    ("hello", "non-empty list"),
])
def test_chat_malformed(messages, message):
    with pytest.raises(ValueError, match=message):
        get_task("chat").format({"messages": messages})


def _llama2_like(messages, add_generation_prompt):
    # A prefix-stable template of another shape: BOS/EOS around each exchange, no end-of-user marker.
    text = ""
    for m in messages:
        if m["role"] == "user":
            text += f"<s>[INST] {m['content']} [/INST]"
        elif m["role"] == "assistant":
            text += f" {m['content']} </s>"
        else:
            text += f"<<SYS>>{m['content']}<</SYS>>"
    return text


def test_chat_with_a_template_renderer_takes_segments_from_rendered_prefixes():
    formatter = get_task("chat").format_with_template(_llama2_like)
    ex = formatter(CONVERSATION)
    assert _text(ex) == _llama2_like(CONVERSATION["messages"], False)
    assert _trained(ex) == " 4 </s>"
    assert ex.prompt == "<<SYS>>Be brief.<</SYS>><s>[INST] Hi [/INST] Hello! </s><s>[INST] 2+2? [/INST]"


def test_chat_template_that_is_not_prefix_stable_is_reported():
    def unstable(messages, add_generation_prompt):
        return f"{len(messages)}:" + "|".join(m["content"] for m in messages)

    with pytest.raises(ValueError, match="prefix"):
        format_with_render(unstable)(CONVERSATION)


def test_chat_special_tokens_only_without_a_tokenizer_template():
    chat = get_task("chat")
    assert special_tokens_for(chat, has_chat_template=False) == ("<|im_start|>", "<|im_end|>")
    assert special_tokens_for(chat, has_chat_template=True) == ()
    assert special_tokens_for(get_task("sql"), has_chat_template=True) == get_task("sql").special_tokens


def test_hub_sources():
    assert get_task("viggo").hub.path == "GEM/viggo"
    assert get_task("sql").hub.splits == {"train": None, "valid": None, "test": None}
    gsm = get_task("gsm8k").hub
    assert (gsm.path, gsm.config, gsm.splits["test"], gsm.splits["valid"]) == ("openai/gsm8k", "main", "test", None)
