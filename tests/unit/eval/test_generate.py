"""Batched generation: batches defined once, left padding that does not change an answer, answers
cut at the stop marker with the reason generation stopped, and the ZeRO-3 path answering alike."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from llmft.eval.generate import (
    EOS,
    MAX_TOKENS,
    STOP_TOKEN,
    Answer,
    Replica,
    finish,
    generate_sharded,
    generation_batches,
    stopping_for,
)
from llmft.eval.run import eval_config
from tests.support import model_config
from tests.support.tiny_tokenizer import make_tokenizer

PROMPTS = ["<START_TEXT>What do you think of", "<START_TEXT>Is it", "<START_TEXT>A long question about a game that"]


@pytest.fixture(scope="module")
def replica(tiny_model_dir):
    return Replica(eval_config(model_config(tiny_model_dir)), stop_token=None, max_new_tokens=8)


def test_a_batch_gives_each_prompt_its_answer_alone(replica):
    together = replica.generate(PROMPTS)
    alone = [replica.generate([prompt])[0] for prompt in PROMPTS]
    assert together == alone
    assert all(isinstance(answer, Answer) and answer.stop_reason in (EOS, MAX_TOKENS) for answer in together)


def test_the_zero3_path_gives_the_replicas_answers(replica):
    # generate_sharded is what the generation eval during training and the zero3 engine run;
    # on one rank it must answer exactly as a replica does for the same batches.
    batches = generation_batches(PROMPTS, replica.tokenizer, 2)
    answers = generate_sharded(replica.model, replica.tokenizer, PROMPTS, batches, stopping=replica.stopping,
                               max_new_tokens=8, rank=0, world_size=1, device=torch.device("cpu"))
    expected = {}
    for batch in batches:
        expected.update(zip(batch, replica.generate([PROMPTS[i] for i in batch])))
    assert answers == [expected[i] for i in range(len(PROMPTS))]


def test_batches_hold_every_prompt_once_longest_first():
    tokenizer = make_tokenizer()
    prompts = ["a", "a much longer prompt than the others", "mid length one", "b", "another mid one"]
    batches = generation_batches(prompts, tokenizer, 2)
    assert sorted(i for batch in batches for i in batch) == list(range(5))
    assert [len(batch) for batch in batches] == [2, 2, 1]
    assert batches[0][0] == 1  # the longest prompt leads the first batch
    lengths = [len(tokenizer(prompts[i])["input_ids"]) for batch in batches for i in batch]
    assert lengths == sorted(lengths, reverse=True)
    assert generation_batches([], tokenizer, 2) == []


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()  # the tiny Llama tokenizer with every task's markers as tokens


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_stop_reason_is_the_task_marker_an_end_token_or_the_length_limit(tokenizer):
    stopping = stopping_for(tokenizer, "<END_MR>")
    marker, eos = tokenizer.convert_tokens_to_ids("<END_MR>"), tokenizer.eos_token_id
    answer = ids(tokenizer, "inform(name[X])")
    assert finish(answer + [marker, eos, eos], tokenizer, stopping) == Answer("inform(name[X])", STOP_TOKEN)
    assert finish(answer + [eos, marker], tokenizer, stopping) == Answer("inform(name[X])", EOS)
    assert finish(answer, tokenizer, stopping) == Answer("inform(name[X])", MAX_TOKENS)


def test_the_models_own_end_tokens_count_as_eos(tokenizer):
    marker = tokenizer.convert_tokens_to_ids("<END_MR>")
    end_of_turn = ids(tokenizer, "game")[-1]  # stands for a chat model's end-of-turn token
    stopping = stopping_for(tokenizer, "<END_MR>", GenerationConfig(eos_token_id=[marker, end_of_turn]))
    assert stopping.end_ids == (tokenizer.eos_token_id, end_of_turn)  # the marker is not an end token
    assert finish(ids(tokenizer, "give") + [end_of_turn], tokenizer, stopping) == Answer("give", EOS)


def test_a_marker_the_tokenizer_lacks_is_matched_as_text():
    plain = make_tokenizer(special_tokens=())  # a base model before fine-tuning
    stopping = stopping_for(plain, "<END_MR>")
    assert stopping.marker_id is None and stopping.token_ids == [plain.eos_token_id]
    assert finish(ids(plain, "inform(name[X])<END_MR> more"), plain, stopping) == Answer("inform(name[X])", STOP_TOKEN)
    assert finish(ids(plain, "inform(name[X])"), plain, stopping).stop_reason == MAX_TOKENS


def test_a_task_without_marker_stops_at_eos(tokenizer):
    stopping = stopping_for(tokenizer, None)
    assert stopping.marker_id is None and stopping.token_ids == [tokenizer.eos_token_id]
    assert finish(ids(tokenizer, "yes") + [tokenizer.eos_token_id], tokenizer, stopping) == Answer("yes", EOS)
