"""Task metrics: pure functions from predictions and references (and, for SQL, the CREATE TABLE
context) to a flat dict of named numbers.

Conventions every metric follows, so `llmft compare` can treat them alike:
- rates are floats in [0, 1] (`exact_match`, `execution_match`, `accuracy`, ...);
- counts are ints (`num_examples`, `unparseable`, `invalid_sql`, `no_number`, ...);
- anything else (the classification `confusion_matrix`) is a nested dict, never a column.
Per-example dicts carry booleans and always a `correct` key: the task's primary metric
(`Task.primary_metric`), which the predictions JSONL stores per example.
"""

from __future__ import annotations

from types import ModuleType

from llmft.tasks import get_task


def _module(task: str) -> ModuleType:
    return get_task(task).metrics_module()


def _check_lengths(predictions: list[str], references: list[str], contexts: list | None) -> None:
    if len(predictions) != len(references) or (contexts is not None and len(contexts) != len(references)):
        raise ValueError(f"{len(predictions)} predictions, {len(references)} references and "
                         f"{'no' if contexts is None else len(contexts)} contexts: they must match")


def score_with_examples(task: str, predictions: list[str], references: list[str],
                        contexts: list[str | None] | None = None) -> tuple[dict, list[dict]]:
    """The aggregate metrics and the per-example dicts, in one pass (SQL executes queries once)."""
    _check_lengths(predictions, references, contexts)
    metrics, examples = _module(task).score_examples(list(predictions), list(references), contexts)
    primary = get_task(task).primary_metric
    return metrics, [{**example, "correct": bool(example[primary])} for example in examples]


def score(task: str, predictions: list[str], references: list[str],
          contexts: list[str | None] | None = None) -> dict:
    """The task's aggregate metrics: rates in [0, 1] as floats, counts as ints."""
    return score_with_examples(task, predictions, references, contexts)[0]


def score_example(task: str, prediction: str, reference: str, context: str | None = None) -> dict:
    """One example's metrics as booleans (and a few details); `correct` is the primary metric."""
    example = _module(task).score_example(prediction, reference, context)
    return {**example, "correct": bool(example[get_task(task).primary_metric])}
