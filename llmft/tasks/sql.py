"""SQL from sql-create-context: a question and its CREATE TABLE schema in, the SQL query out.

`<START_Q>{question}<END_Q><START_C>{context}<END_C><START_A>{answer}<END_A>`; `<END_A>` is
the stop token. The hub dataset has only a train split: llmft derives validation and test
from it (see `llmft.data.sources`).
"""

from __future__ import annotations

from llmft.tasks.base import Example, HubSource, Task, marked_example, text_field


def format_sql(row: dict) -> Example:
    return marked_example(
        [("<START_Q>", text_field(row, "question"), "<END_Q>"),
         ("<START_C>", text_field(row, "context"), "<END_C>")],
        ("<START_A>", text_field(row, "answer"), "<END_A>"),
    )


TASK = Task(
    name="sql",
    required_fields=("question", "context", "answer"),
    special_tokens=("<START_Q>", "<END_Q>", "<START_C>", "<END_C>", "<START_A>", "<END_A>"),
    stop_token="<END_A>",
    format=format_sql,
    metrics="llmft.eval.metrics.sql",
    primary_metric="execution_match",
    answer_field="answer",
    context_field="context",
    samples="llmft.data.samples.sql",
    hub=HubSource(path="b-mc2/sql-create-context", splits={"train": None, "valid": None, "test": None}),
)
