"""What a model is asked at generation time: the task's prompt, few-shot prefixes, metric contexts."""

from __future__ import annotations

import pytest

from llmft.errors import LlmftError
from llmft.eval.prompts import MAX_NEW_TOKENS_CAP, generation_inputs
from tests.support.tiny_tokenizer import make_cfg


def test_prompts_end_where_the_answer_starts_and_references_are_the_answers(tmp_path, tiny_tokenizer):
    cfg = make_cfg(tmp_path, "viggo", "sample:viggo", test="sample:viggo")
    inputs = generation_inputs(cfg, tiny_tokenizer, "test", limit=5)
    assert len(inputs.prompts) == len(inputs.references) == len(inputs.examples) == 5
    assert all(p.endswith("<START_MR>") for p in inputs.prompts)
    assert inputs.contexts is None
    assert 16 < inputs.max_new_tokens <= MAX_NEW_TOKENS_CAP


def test_sql_passes_each_rows_schema_to_its_metrics(tmp_path, tiny_tokenizer):
    cfg = make_cfg(tmp_path, "sql", "sample:sql", valid="sample:sql")
    inputs = generation_inputs(cfg, tiny_tokenizer, "valid", limit=3)
    assert len(inputs.contexts) == 3 and all(c.startswith("CREATE TABLE") for c in inputs.contexts)


def test_few_shot_puts_whole_solved_examples_first(tmp_path, tiny_tokenizer):
    cfg = make_cfg(tmp_path, "gsm8k", "sample:gsm8k", test="sample:gsm8k")
    plain = generation_inputs(cfg, tiny_tokenizer, "test", limit=2)
    shots = generation_inputs(cfg, tiny_tokenizer, "test", limit=2, few_shot=3)
    prefix = shots.prompts[0].removesuffix(plain.prompts[0])
    assert prefix.count("<END_A>\n") == 3 and shots.prompts[1].startswith(prefix)


def test_a_missing_split_is_a_user_error(tmp_path, tiny_tokenizer):
    cfg = make_cfg(tmp_path, "viggo", "sample:viggo")
    with pytest.raises(LlmftError, match="data.test"):
        generation_inputs(cfg, tiny_tokenizer, "test", limit=1)


OWN_ROWS = {"prompt_completion": {"prompt": "Q: 2+2?\nA:", "completion": " 4"},
            "chat": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}}


@pytest.mark.parametrize("task", ["viggo", "sql", "gsm8k", "prompt_completion", "chat"])
def test_a_row_without_its_answer_gets_the_prompt_of_the_full_row(task):
    from llmft.data.samples import generate_rows
    from llmft.eval.prompts import prompt_of
    from llmft.tasks import get_task

    spec = get_task(task)
    row = OWN_ROWS.get(task) or generate_rows(task, "test")[0]
    if spec.answer_field:
        bare = {k: v for k, v in row.items() if k != spec.answer_field}
    else:  # chat: the conversation up to the answer
        bare = {"messages": row["messages"][:-1]}
    assert prompt_of(spec, spec.format, bare) == spec.format(row).prompt


def test_a_row_missing_a_prompt_field_names_it():
    from llmft.eval.prompts import prompt_of
    from llmft.tasks import get_task

    with pytest.raises(ValueError, match="missing field `context`"):
        prompt_of(get_task("sql"), get_task("sql").format, {"question": "How many?"})


def test_text_fills_the_tasks_one_input_field():
    from llmft.eval.prompts import row_from_text
    from llmft.tasks import get_task

    assert row_from_text(get_task("viggo"), "hi") == {"target": "hi"}
    assert row_from_text(get_task("gsm8k"), "2+2?") == {"question": "2+2?"}
    assert row_from_text(get_task("chat"), "hi") == {"messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(LlmftError, match="--field question=... --field context=..."):
        row_from_text(get_task("sql"), "How many?")
