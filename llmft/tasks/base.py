"""What a task is: a pure function from a source row to prompt and completion segments."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    """A task: its fields, its special tokens and its formatter.

    `stop_token` ends every completion and stops generation; None means the tokenizer's EOS.
    Bump `format_version` whenever the formatting changes, so cached tokenized data is rebuilt.
    """

    name: str
    required_fields: tuple[str, ...]
    special_tokens: tuple[str, ...]
    stop_token: str | None
    format: Callable[[dict], Example]
    format_version: int = 1
    hub: HubSource | None = None
