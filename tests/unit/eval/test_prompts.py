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
