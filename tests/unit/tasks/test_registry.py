"""Everything llmft knows about a task comes from its `Task`: the config accepts every registered
name, and each task's metrics, primary metric, context field and samples fit together."""

from __future__ import annotations

import pytest

from llmft.config import Config
from llmft.data.samples import generate_rows, sample_tasks
from llmft.eval.metrics import score_with_examples
from llmft.tasks import TASKS


def test_the_config_accepts_exactly_the_registered_tasks():
    for name in TASKS:
        Config.model_validate({"model": {"name_or_path": "m"}, "data": {"task": name, "train": "t.jsonl"}})
    with pytest.raises(Exception, match="viggo"):
        Config.model_validate({"model": {"name_or_path": "m"}, "data": {"task": "summarize", "train": "t.jsonl"}})


@pytest.mark.parametrize("name", list(TASKS))
def test_each_task_scores_with_its_own_metrics_and_primary_metric(name):
    task = TASKS[name]
    rows = generate_rows(name, "test")[:4] if task.samples else [{"prompt": "a", "completion": "b"}] * 4
    examples = [task.format(row) for row in rows] if task.format_with_template is None or name != "chat" else None
    references = [e.reference for e in examples] if examples else ["b"] * 4
    contexts = [row.get(task.context_field) for row in rows] if task.context_field else None
    predictions = [references[0], "wrong", references[2], ""]
    metrics, per_example = score_with_examples(name, predictions, references, contexts)
    assert task.primary_metric in metrics
    assert [e["correct"] for e in per_example] == [bool(e[task.primary_metric]) for e in per_example]
    assert per_example[0]["correct"] and not per_example[1]["correct"]


def test_sample_data_is_registered_per_task():
    assert set(sample_tasks()) == {name for name, task in TASKS.items() if task.samples} == {"viggo", "sql", "gsm8k"}
