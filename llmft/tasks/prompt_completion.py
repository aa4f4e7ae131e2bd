"""OpenAI's legacy fine-tuning format: JSONL rows `{"prompt": ..., "completion": ...}`.

The text is `prompt + completion` verbatim, so separators and leading spaces are the user's
(as with OpenAI; `llmft prepare` warns when prompts share no common ending). The stop token is
the tokenizer's EOS, appended to every completion by the tokenizer side.
"""

from __future__ import annotations

import os
from typing import Any

from llmft.tasks.base import Example, Segment, Task, text_field


def format_prompt_completion(row: dict) -> Example:
    prompt = text_field(row, "prompt", allow_empty=True)
    completion = text_field(row, "completion")
    return Example(
        segments=(Segment(prompt, trained=False), Segment(completion, trained=True)),
        prompt=prompt,
        reference=completion,
    )


def _common_suffix(texts: list[str]) -> str:
    reversed_prefix = os.path.commonprefix([t[::-1] for t in texts])
    return reversed_prefix[::-1]


def separator_checks(rows: list[dict]) -> dict[str, Any]:
    """OpenAI prepare_data's checks: a common prompt separator and a common completion ending."""
    prompts = [r["prompt"] for r in rows]
    completions = [r["completion"] for r in rows]
    separator = _common_suffix(prompts) if prompts else ""
    ending = _common_suffix(completions) if completions else ""
    warnings = []
    if not separator:
        warnings.append("Prompts do not end with a common separator, so the model cannot tell where a "
                        "prompt ends and its completion should start. End every prompt with the same "
                        "separator that appears nowhere else, e.g. `\\n\\n###\\n\\n`.")
    elif any(separator in p[:-len(separator)] for p in prompts):
        warnings.append(f"The prompt separator {separator!r} also appears inside some prompts; pick one "
                        "that appears only at the end.")
    if not ending:
        warnings.append("Completions do not end with a common stop sequence. llmft appends the "
                        "tokenizer's EOS token to every completion and generation stops there, but if "
                        "you also stop on a string at inference time, end every completion with it "
                        "(e.g. `\\n` or ` END`).")
    leading_space = sum(1 for c in completions if c[:1].isspace())
    return {"common_prompt_separator": separator, "common_completion_ending": ending,
            "completions_starting_with_whitespace": leading_space, "warnings": warnings}


TASK = Task(
    name="prompt_completion",
    required_fields=("prompt", "completion"),
    special_tokens=(),
    stop_token=None,
    format=format_prompt_completion,
    metrics="llmft.eval.metrics.generic",
    primary_metric="exact_match",
    answer_field="completion",
    data_checks=separator_checks,
)
