"""A tiny Llama edited to give one known answer, for tests of what generation does with it.

Its transformer layers add nothing (their output projections are zero), so the next token
depends only on the current one: a bigram table written into the embeddings and the output
head. After the task's last prompt token it emits the answer's tokens and then the task's stop
token, on every prompt.
"""

from __future__ import annotations

from pathlib import Path

import torch


def make_scripted_model(base: Path, out: Path, task_name: str, after: str, answer: str) -> list[int]:
    """Save into `out` a copy of the tiny (untied) model at `base`, with `task_name`'s tokens, that
    answers `answer` and then the task's stop token whenever the text so far ends in token
    `after`. Returns the answer's token ids."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmft.models.tokenizer import add_task_tokens
    from llmft.tasks import get_task

    task = get_task(task_name)
    tokenizer = AutoTokenizer.from_pretrained(base)
    add_task_tokens(tokenizer, task)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert not model.config.tie_word_embeddings, "the head and the embeddings are written separately"
    chain = [tokenizer.convert_tokens_to_ids(after), *answer_ids,
             tokenizer.convert_tokens_to_ids(task.stop_token)]
    assert len(set(chain)) == len(chain) <= model.config.hidden_size, "a bigram chain needs distinct tokens"
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        for j, (current, following) in enumerate(zip(chain, chain[1:])):
            embed[current] = 0.0
            embed[current, j] = 1.0  # after the final norm, only dimension j is lit
            head[:, j] = 0.0
            head[following, j] = 10.0  # ... and only `following` reads it
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return answer_ids
