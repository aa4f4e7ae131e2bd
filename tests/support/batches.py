"""Random tokenized examples and a tiny in-memory Llama, for tests of batching and the loss."""

from __future__ import annotations

import random

import pyarrow as pa
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llmft.data.batching import TokenizedExamples


def random_examples(n: int, seed: int = 0, vocab: int = 100) -> TokenizedExamples:
    """`n` examples of 3-22 tokens: a BOS, an untrained prompt and a trained completion."""
    rng = random.Random(seed)
    ids, labels = [], []
    for _ in range(n):
        prompt, completion = rng.randint(2, 12), rng.randint(1, 10)
        row = [1] + [rng.randrange(3, vocab) for _ in range(prompt + completion - 1)]
        ids.append(row)
        labels.append([-100] * prompt + row[prompt:])
    return examples_of(ids, labels)


def examples_of(input_ids: list[list[int]], labels: list[list[int]]) -> TokenizedExamples:
    """TokenizedExamples of these token lists, through an Arrow table as a worker gets them."""
    table = pa.table({
        "input_ids": pa.array(input_ids, type=pa.list_(pa.int32())),
        "labels": pa.array(labels, type=pa.list_(pa.int32())),
        "num_trained": pa.array([sum(label != -100 for label in row) for row in labels], type=pa.int32()),
    })
    return TokenizedExamples.from_table(table)


def tiny_llama(hidden_size: int = 32, layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    """A random Llama over a 100-token vocabulary, with sdpa attention, in eval mode."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=100, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).eval()
