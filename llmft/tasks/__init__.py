"""The task registry: `get_task(name)` returns a `Task` (see `llmft.tasks.base`).

Each task module is pure (a row in, an `Example` out) and defines `TASK`.
"""

from __future__ import annotations

from llmft.errors import LlmftError
from llmft.tasks import chat, gsm8k, prompt_completion, sql, viggo
from llmft.tasks.base import Example, HubSource, Segment, Task

TASKS: dict[str, Task] = {m.TASK.name: m.TASK for m in (viggo, sql, gsm8k, prompt_completion, chat)}


def get_task(name: str) -> Task:
    """The task called `name`; LlmftError listing the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise LlmftError(f"Unknown task `{name}` (data.task). Known tasks: {', '.join(TASKS)}.") from None


def special_tokens_for(task: Task, has_chat_template: bool) -> tuple[str, ...]:
    """Tokens to add to a tokenizer for `task`. A chat task on a tokenizer with its own chat
    template uses that template's markers, so llmft's built-in ChatML markers are not added."""
    if task.format_with_template is not None and has_chat_template:
        return ()
    return task.special_tokens


__all__ = ["TASKS", "Example", "HubSource", "Segment", "Task", "get_task", "special_tokens_for"]
