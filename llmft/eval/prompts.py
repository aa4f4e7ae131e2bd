"""What a model is asked at generation time: each example's prompt in the task's own format,
with K solved training examples in front for a few-shot baseline, and what it should answer.

Used by `llmft eval` and by the generation eval during training, so both ask the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmft.config import Config
from llmft.errors import LlmftError
from llmft.tasks import Example, Task

MAX_NEW_TOKENS_CAP = 512


@dataclass
class GenerationInputs:
    """Prompts of a split and what to score their answers against."""

    examples: list[Example]
    prompts: list[str]
    references: list[str]
    contexts: list[str | None] | None  # the task's `context_field` per row, for its metrics
    max_new_tokens: int


def generation_inputs(cfg: Config, tokenizer, split: str, *, limit: int | None, few_shot: int = 0) -> GenerationInputs:
    """Formatted examples, prompts, references, metric contexts and a generation length for a split."""
    from llmft.data.sources import load_rows
    from llmft.data.tokenize import formatter_for
    from llmft.tasks import get_task

    task = get_task(cfg.data.task)
    rows = load_rows(cfg, split)
    rows = rows[:limit] if limit else rows
    formatter = formatter_for(task, tokenizer)
    examples = [formatter(row) for row in rows]
    shots = few_shot_prefix(cfg, task, formatter, tokenizer, few_shot)
    references = [ex.reference for ex in examples]
    longest = max((len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references), default=16)
    return GenerationInputs(
        examples=examples, prompts=[shots + ex.prompt for ex in examples], references=references,
        contexts=[row.get(task.context_field) for row in rows] if task.context_field else None,
        max_new_tokens=min(MAX_NEW_TOKENS_CAP, int(longest * 1.5) + 16))


def few_shot_prefix(cfg: Config, task: Task, formatter, tokenizer, k: int) -> str:
    """The first K training examples, each in full (prompt, answer, stop marker)."""
    if k <= 0:
        return ""
    from llmft.data.sources import load_rows

    if cfg.data.train is None:
        raise LlmftError("--few-shot needs data.train to draw examples from.")
    stop = "" if task.stop_token else (tokenizer.eos_token or "")
    shots = [formatter(row) for row in load_rows(cfg, "train")[:k]]
    return "".join("".join(seg.text for seg in shot.segments) + stop + "\n" for shot in shots)


def prompt_of(task: Task, formatter, row: dict) -> str:
    """The generation prompt of a row of raw task fields that may lack the answer (`llmft generate`).

    The prompt never depends on the answer, but formatters check it is there, so a stand-in
    answer is filled in. ValueError (naming the field) when a prompt field is missing.
    """
    stand_in = "?"
    if task.answer_field:
        row = {**row, task.answer_field: row.get(task.answer_field) or stand_in}
    else:  # chat: the answer is the assistant turn after the messages
        messages = row.get("messages")
        if isinstance(messages, list) and not (messages and isinstance(messages[-1], dict)
                                               and messages[-1].get("role") == "assistant"):
            row = {**row, "messages": [*messages, {"role": "assistant", "content": stand_in}]}
    return formatter(row).prompt


def row_from_text(task: Task, text: str) -> dict:
    """`llmft generate --text`: the task's one input field (a user message for chat)."""
    if task.answer_field is None:
        return {"messages": [{"role": "user", "content": text}]}
    inputs = [name for name in task.required_fields if name != task.answer_field]
    if len(inputs) != 1:
        raise LlmftError(f"--text fills one field, but task {task.name} reads {', '.join(inputs)}: give each with "
                         f"--field NAME=VALUE (e.g. " + " ".join(f"--field {n}=..." for n in inputs) + ").")
    return {inputs[0]: text}
