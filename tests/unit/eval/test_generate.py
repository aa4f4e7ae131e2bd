"""Batched greedy generation: left padding must not change an answer, and answers end at the stop marker."""

from __future__ import annotations

import pytest
import torch

from llmft.eval.generate import Generator, clean_prediction, generate_sharded

PROMPTS = ["<START_TEXT>What do you think of", "<START_TEXT>Is it", "<START_TEXT>A long question about a game that"]


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    return Generator(str(tiny_model_dir), stop_token=None, max_new_tokens=8, use_gpu=False, dtype="float32")


def test_a_batch_gives_each_prompt_its_answer_alone(generator):
    together = generator.generate(PROMPTS)
    alone = [generator.generate([prompt])[0] for prompt in PROMPTS]
    assert together == alone
    assert all(isinstance(answer, str) for answer in together)


def test_training_time_generation_gives_the_same_answers(generator):
    # The generation eval during training runs on the training engine's module, one rank here.
    answers = generate_sharded(generator.model, generator.tokenizer, PROMPTS, stop_token=None, max_new_tokens=8,
                               batch_size=2, rank=0, world_size=1, device=torch.device("cpu"))
    assert answers == generator.generate(PROMPTS)


class _Tokens:
    pad_token, eos_token = "<unk>", "</s>"


def test_answer_is_the_text_before_the_stop_marker():
    assert clean_prediction(" inform(name[X])<END_MR> junk", "<END_MR>", _Tokens()) == "inform(name[X])"
    assert clean_prediction("answer</s><unk><unk>", "</s>", _Tokens()) == "answer"
    assert clean_prediction("  no marker  ", None, _Tokens()) == "no marker"
