"""The run's tokenizer: loaded from `model.tokenizer` or `model.name_or_path`, with the task's
special tokens and a pad token. Training, evaluation and the CLI all load it through here."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from llmft.errors import LlmftError
from llmft.models.source import model_source, unloadable_message

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llmft.config import Config
    from llmft.tasks.base import Task


def load_tokenizer(cfg: Config) -> PreTrainedTokenizerBase:
    """The tokenizer of `cfg.model.tokenizer` (or `cfg.model.name_or_path`): a folder or a hub id.

    Raises LlmftError naming the config key when the folder is missing or the hub is unreachable.
    Task tokens are not added here: call `add_task_tokens` next.
    """
    from transformers import AutoTokenizer

    key = "model.tokenizer" if cfg.model.tokenizer else "model.name_or_path"
    source = model_source(cfg, key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise LlmftError(unloadable_message(cfg, key, source, "tokenizer", exc)) from None
    if hasattr(tokenizer, "legacy"):
        # transformers 5's LlamaTokenizer does not write `legacy` back in save_pretrained, so a
        # saved (e.g. exported) tokenizer would silently switch to the non-legacy default and
        # tokenize text after special tokens differently from training. Keep it explicit.
        tokenizer.init_kwargs["legacy"] = tokenizer.legacy
    return tokenizer


def load_task_tokenizer(cfg: Config) -> PreTrainedTokenizerBase:
    """The run's tokenizer: `load_tokenizer` plus the task's special tokens and a pad token."""
    from llmft.tasks import get_task

    tokenizer = load_tokenizer(cfg)
    add_task_tokens(tokenizer, get_task(cfg.data.task))
    return tokenizer


def add_task_tokens(tokenizer: PreTrainedTokenizerBase, task: Task) -> int:
    """Add `task.special_tokens` as special tokens and make sure a pad token is set.

    Returns how many tokens were new to the vocabulary (the model's embeddings must then grow by
    that many rows, see `load_model`). Adding the same task twice adds nothing the second time.

    Pad token: when the tokenizer has none (Llama-2 has none), reuse `unk`, else `eos`, rather
    than adding a new `[PAD]` token. Padded positions are masked out of attention and loss, so
    any existing token works, and a new one would add an untrained embedding row. `unk` comes
    first because a pad id equal to `eos` makes any code that masks "pad" ids also mask the real
    end-of-sequence tokens, and the model would never learn to stop.
    """
    from llmft.tasks import special_tokens_for

    # A chat task on a tokenizer with its own chat template uses that template's markers.
    tokens = list(special_tokens_for(task, getattr(tokenizer, "chat_template", None) is not None))
    added = 0
    if tokens:
        # transformers 5 renamed `additional_special_tokens` to `extra_special_tokens`.
        if "replace_extra_special_tokens" in inspect.signature(tokenizer.add_special_tokens).parameters:
            added = tokenizer.add_special_tokens({"extra_special_tokens": tokens},
                                                 replace_extra_special_tokens=False)
        else:  # transformers 4.x
            added = tokenizer.add_special_tokens({"additional_special_tokens": tokens},
                                                 replace_additional_special_tokens=False)
    ensure_pad_token(tokenizer)
    return added


def task_stop_token(tokenizer: PreTrainedTokenizerBase, task: Task) -> str | None:
    """The text that ends an answer of `task` with this tokenizer: the task's stop token, or, for a
    chat task over the tokenizer's own chat template, that template's end-of-turn marker.

    The marker is what the template writes right after an assistant message: the longest special
    token it starts with (Qwen's `<|im_end|>`, Gemma's `<end_of_turn>`, Phi-3's `<|end|>`, Llama-3's
    `<|eot_id|>`, Mistral's `</s>`); the EOS token when it starts with none.
    """
    if task.format_with_template is None or not getattr(tokenizer, "chat_template", None):
        return task.stop_token
    probe = "llmft stop probe"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}],
                                         tokenize=False)
    after = text[text.rindex(probe) + len(probe):].lstrip(" ")
    markers = [t for t in (*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()) if t and after.startswith(t)]
    return max(markers, key=len) if markers else tokenizer.eos_token


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Pad with `unk`, else `eos`, when the tokenizer has no pad token (see `add_task_tokens`)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise LlmftError("The tokenizer has no pad, unk or eos token to pad batches with. Use a "
                         "tokenizer that defines an eos token (model.tokenizer).")

