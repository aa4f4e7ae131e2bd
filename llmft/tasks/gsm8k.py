"""GSM8k: a grade-school maths word problem in, a worked solution ending `#### N` out.

`<START_Q>{question}<END_Q><START_A>{answer}<END_A>`; `<END_A>` is the stop token. The hub
dataset has no validation split: llmft derives it from train (see `llmft.data.sources`).
"""

from __future__ import annotations

from llmft.tasks.base import Example, HubSource, Task, marked_example, text_field


def format_gsm8k(row: dict) -> Example:
    return marked_example(
        [("<START_Q>", text_field(row, "question"), "<END_Q>")],
        ("<START_A>", text_field(row, "answer"), "<END_A>"),
    )


TASK = Task(
    name="gsm8k",
    required_fields=("question", "answer"),
    special_tokens=("<START_Q>", "<END_Q>", "<START_A>", "<END_A>"),
    stop_token="<END_A>",
    format=format_gsm8k,
    metrics="llmft.eval.metrics.gsm8k",
    primary_metric="accuracy",
    answer_field="answer",
    samples="llmft.data.samples.gsm8k",
    hub=HubSource(path="openai/gsm8k", config="main", splits={"train": None, "valid": None, "test": "test"}),
)
