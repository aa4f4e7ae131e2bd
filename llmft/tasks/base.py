"""What a task is: a pure function from a source row to prompt and completion segments."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable


@dataclass(frozen=True)
class Segment:
    """A piece of text and whether the loss is computed on its tokens."""

    text: str
    trained: bool


@dataclass(frozen=True)
class Example:
    """One formatted training/evaluation example.

    `segments` concatenate to the full training text. `prompt` is the text a model is given at
    generation time (the untrained prefix up to and including the completion's start marker) and
    `reference` the expected answer (without its stop token), for evaluation.
    """

    segments: tuple[Segment, ...]
    prompt: str
    reference: str


@dataclass(frozen=True)
class HubSource:
    """Where the task's public dataset lives on the Hugging Face hub."""

    path: str
    config: str | None = None
    # Hub split name for each llmft split; None: derive it with a seeded split of `train`.
    splits: dict[str, str | None] = field(default_factory=lambda: {"train": "train", "valid": "validation", "test": "test"})


@dataclass(frozen=True)
class Task:
    """A task: its fields, its special tokens, its formatter and how it is scored.

    `stop_token` ends every completion and stops generation; None means the tokenizer's EOS.
    Bump `format_version` whenever the formatting changes, so cached tokenized data is rebuilt.
    Everything else llmft needs to know about a task is here, so adding one means one module
    under `llmft/tasks/` (plus its metrics module) and a line in the registry.
    """

    name: str
    required_fields: tuple[str, ...]
    special_tokens: tuple[str, ...]
    stop_token: str | None
    format: Callable[[dict], Example]
    # The metrics module (`score_example`, `score_examples`), imported on first use: SQL's needs sqlglot.
    metrics: str
    # The per-example metric stored as `correct` in predictions files.
    primary_metric: str
    # A row field the metrics need besides prediction and reference (SQL: the CREATE TABLE schema).
    context_field: str | None = None
    # The row field holding the answer, which rows to generate for may leave out; None when the
    # answer is not a field (chat: the last assistant message).
    answer_field: str | None = None
    # The module generating llmft's synthetic `sample:<task>` rows (see `llmft.data.samples`).
    samples: str | None = None
    # Extra `llmft prepare` checks over the training rows: `rows -> {..., "warnings": [...]}`.
    data_checks: Callable[[list[dict]], dict] | None = None
    format_version: int = 1
    hub: HubSource | None = None
    # For tasks whose text comes from the tokenizer's chat template: given a `Render`
    # (the template as a pure function), return the formatter to use instead of `format`.
    format_with_template: Callable[[Render], Callable[[dict], Example]] | None = None

    def metrics_module(self) -> ModuleType:
        return importlib.import_module(self.metrics)


# `render(messages, add_generation_prompt) -> text`: a chat template as a pure function. The
# tokenizer side builds it (e.g. from `tokenizer.apply_chat_template`), so tasks stay pure.
Render = Callable[[list[dict], bool], str]


def text_field(row: dict, name: str, *, allow_empty: bool = False) -> str:
    """The string in `row[name]`; ValueError (naming the field) when missing, mistyped or empty."""
    if name not in row or row[name] is None:
        raise ValueError(f"missing field `{name}`")
    value = row[name]
    if not isinstance(value, str):
        raise ValueError(f"field `{name}` must be a string, not {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"field `{name}` is empty")
    return value


def marked_example(prompt_parts: list[tuple[str, str, str]], completion: tuple[str, str, str]) -> Example:
    """An example in the special-token style `<START_X>x<END_X>...<START_Y>y<END_Y>`.

    `prompt_parts` and `completion` are (start marker, text, end marker). The prompt (untrained)
    runs up to and including the completion's start marker; the completion's text and its end
    marker (the stop token) are trained.
    """
    start, answer, stop = completion
    prompt = "".join(f"{s}{text}{e}" for s, text, e in prompt_parts) + start
    return Example(
        segments=(Segment(prompt, trained=False), Segment(answer + stop, trained=True)),
        prompt=prompt,
        reference=answer,
    )
