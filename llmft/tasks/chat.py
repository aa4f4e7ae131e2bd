"""OpenAI's chat fine-tuning format: JSONL rows `{"messages": [{"role", "content", "weight"?}, ...]}`.

The loss is on assistant messages only, and only on those whose optional `weight` is 1 (OpenAI's
semantics; `weight` 0 keeps a turn as context). The text comes from a chat template given as a
pure function `render(messages, add_generation_prompt) -> str`:

- `builtin_render`, a ChatML-like template (`<|im_start|>role\\n...<|im_end|>`) used when the
  tokenizer has no chat template of its own; its two markers are the task's special tokens and
  `<|im_end|>` its stop token;
- or the tokenizer's own template, wrapped by the tokenizer side and passed to
  `format_with_render` (so this module does no tokenizer work and stays pure).

Segments come from rendering prefixes of the conversation: for assistant message i, the text
between `render(messages[:i], True)` (everything up to and including the assistant header) and
`render(messages[:i + 1], False)` is its trained part (content plus the template's end-of-turn
marker). Each rendered prefix must be a prefix of the full rendering, which holds for the usual
templates; a template for which it does not is reported as a ValueError.
"""

from __future__ import annotations

from typing import Callable

from llmft.tasks.base import Example, Render, Segment, Task

ROLES = ("system", "user", "assistant", "tool", "function", "developer")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def builtin_render(messages: list[dict], add_generation_prompt: bool) -> str:
    """ChatML-like: `<|im_start|>{role}\\n{content}<|im_end|>` per message, no separator."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def check_messages(row: dict) -> list[dict]:
    """The row's messages as `{"role", "content"}` dicts (weight kept); ValueError when malformed."""
    messages = row.get("messages")
    if messages is None:
        raise ValueError("missing field `messages`")
    if not isinstance(messages, list) or not messages:
        raise ValueError("field `messages` must be a non-empty list of {role, content} objects")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ValueError(f"{where} must be an object with `role` and `content`")
        if message.get("role") not in ROLES:
            raise ValueError(f"{where}.role must be one of {', '.join(ROLES)}, not {message.get('role')!r}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"{where}.content must be a string")
        if "weight" in message and message["weight"] not in (0, 1):
            raise ValueError(f"{where}.weight must be 0 or 1, not {message['weight']!r}")
    trained = [m for m in messages if m["role"] == "assistant" and m.get("weight", 1) == 1]
    if not trained:
        raise ValueError("no assistant message with weight 1: nothing to train on")
    if not any(m["content"].strip() for m in trained):
        raise ValueError("every trained assistant message is empty")
    return messages


def format_with_render(render: Render) -> Callable[[dict], Example]:
    """A chat formatter over the template `render` (see the module docstring)."""

    def format_chat(row: dict) -> Example:
        messages = [{"role": m["role"], "content": m["content"]} for m in check_messages(row)]
        weights = [m.get("weight", 1) for m in row["messages"]]
        full = render(messages, False)
        segments: list[Segment] = []
        done = 0  # characters of `full` already covered by segments
        prompt = reference = ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            head = _prefix(render(messages[:i], True), full, i)
            turn = _prefix(render(messages[:i + 1], False), full, i + 1)
            if len(head) < done or len(turn) < len(head):
                raise ValueError("the chat template does not render conversation prefixes as "
                                 "prefixes of the whole; use a tokenizer without a chat template "
                                 "(llmft's built-in one) or a prefix-stable template")
            segments.append(Segment(full[done:len(head)], trained=False))
            segments.append(Segment(full[len(head):len(turn)], trained=weights[i] == 1))
            done = len(turn)
            prompt, reference = head, message["content"]
        segments.append(Segment(full[done:], trained=False))
        return Example(segments=tuple(s for s in segments if s.text), prompt=prompt, reference=reference)

    return format_chat


def _prefix(text: str, full: str, count: int) -> str:
    if not full.startswith(text):
        raise ValueError(f"the chat template renders the first {count} messages as text that is "
                         "not a prefix of the whole conversation, so trained turns cannot be "
                         "located; use a prefix-stable template or llmft's built-in one")
    return text


TASK = Task(
    name="chat",
    required_fields=("messages",),
    special_tokens=(IM_START, IM_END),
    stop_token=IM_END,
    format=format_with_render(builtin_render),
    metrics="llmft.eval.metrics.generic",
    primary_metric="exact_match",
    format_with_template=format_with_render,
)
