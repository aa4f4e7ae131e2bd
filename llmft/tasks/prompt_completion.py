"""OpenAI's legacy fine-tuning format: JSONL rows `{"prompt": ..., "completion": ...}`.

The text is `prompt + completion` verbatim, so separators and leading spaces are the user's
(as with OpenAI; `llmft prepare` warns when prompts share no common ending). The stop token is
the tokenizer's EOS, appended to every completion by the tokenizer side.
"""

from __future__ import annotations

from llmft.tasks.base import Example, Segment, Task, text_field


def format_prompt_completion(row: dict) -> Example:
    prompt = text_field(row, "prompt", allow_empty=True)
    completion = text_field(row, "completion")
    return Example(
        segments=(Segment(prompt, trained=False), Segment(completion, trained=True)),
        prompt=prompt,
        reference=completion,
    )


TASK = Task(
    name="prompt_completion",
    required_fields=("prompt", "completion"),
    special_tokens=(),
    stop_token=None,
    format=format_prompt_completion,
)
