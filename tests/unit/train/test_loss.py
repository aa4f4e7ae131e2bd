"""The one loss: `forward_loss` (collate, forward, summed loss and counts) and the scaling rule."""

from __future__ import annotations

import pytest
import torch

from llmft.data.batching import (
    collate,
    pack_examples,
    trained_tokens,
    worker_micro_batches,
)
from llmft.train.loss import forward_loss, loss_scale, next_token_loss
from tests.support.batches import random_examples, tiny_llama

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_llama()


def test_forward_loss_is_the_next_token_loss_of_the_collated_rows(tiny_model):
    data = random_examples(6, seed=1)
    rows = [[0, 1], [2], [3, 4, 5]]
    loss, stats = forward_loss(tiny_model, data, rows, pad_id=0, block_mask=True, device=CPU)
    batch = collate(data, rows, pad_id=0, block_mask=True)
    logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        position_ids=batch["position_ids"]).logits
    expected, expected_stats = next_token_loss(logits, batch["labels"], batch["segment_ids"])
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert stats == expected_stats
    assert stats.trained_tokens == trained_tokens(data, rows)


def test_packed_rows_give_the_loss_of_the_examples_alone(tiny_model):
    # Fails if packed examples attend to each other (forward_loss passing neither the block mask
    # nor the restarting positions; either alone keeps them apart, RoPE being relative).
    data = random_examples(10, seed=3)
    packed = pack_examples(data.lengths, 40)
    assert any(len(row) > 1 for row in packed)
    with torch.no_grad():
        together, _ = forward_loss(tiny_model, data, packed, pad_id=0, block_mask=True, device=CPU)
        alone = sum(float(forward_loss(tiny_model, data, [[i]], pad_id=0, block_mask=True, device=CPU)[0])
                    for i in range(10))
    assert float(together) == pytest.approx(alone, rel=1e-5)


def test_scaled_sums_averaged_over_workers_give_the_global_per_token_mean():
    """What DeepSpeed computes from llmft's scaled losses (sum of micro-batch gradients per worker,
    then the mean over workers) equals the gradient of the mean loss over the global batch."""
    model = tiny_llama(hidden_size=16, layers=1).train()
    data = random_examples(8, seed=7)
    batch = [[i] for i in range(8)]  # one global batch of 8 rows with uneven trained tokens

    def grads() -> list[torch.Tensor]:
        out = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        return out

    loss, stats = forward_loss(model, data, batch, pad_id=0, block_mask=True, device=CPU)
    (loss / stats.trained_tokens).backward()
    reference = grads()

    world_size = 2
    total = [torch.zeros_like(p) for p in model.parameters()]
    scale = loss_scale(world_size, trained_tokens(data, batch))
    for rank in range(world_size):
        for rows in worker_micro_batches(batch, rank=rank, world_size=world_size, micro_batch_size=2):
            micro_loss, _ = forward_loss(model, data, rows, pad_id=0, block_mask=True, device=CPU)
            (micro_loss * scale).backward()
        total = [t + g for t, g in zip(total, grads())]
    averaged = [t / world_size for t in total]  # DeepSpeed's all-reduce mean over workers
    for got, want in zip(averaged, reference):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_loss_scale():
    assert loss_scale(4, 200) == pytest.approx(0.02)
    assert loss_scale(2, 0) == 2  # a batch of filler rows trains nothing and divides by nothing


def test_sequence_accuracy_counts_whole_examples():
    labels = torch.tensor([[-100, 5, 6, -100, 7, 8]])
    segments = torch.tensor([[1, 1, 1, 2, 2, 2]])
    logits = torch.full((1, 6, 10), -10.0)
    # predictions for positions 1..5: right, right, (masked), right, wrong
    for pos, token in enumerate([5, 6, 0, 7, 9]):
        logits[0, pos, token] = 10.0
    _, stats = next_token_loss(logits, labels, segments)
    assert (stats.trained_tokens, stats.correct_tokens, stats.sequences, stats.correct_sequences) == (4, 3, 2, 1)


def test_flash_attention_layout_gives_the_loss_of_the_examples_alone(tiny_model):
    """The padding-free row llmft builds for flash_attention_2, run here through transformers'
    padding-free sdpa path (no mask, restarting positions, no KV cache): the same per-example
    losses as each example alone. Fails if forward_loss leaves the cache on or drops the positions."""
    data = random_examples(10, seed=3)
    packed = pack_examples(data.lengths, 40)
    with torch.no_grad():
        together, stats = forward_loss(tiny_model, data, packed, pad_id=0, block_mask=False, device=CPU)
        alone = sum(float(forward_loss(tiny_model, data, [[i]], pad_id=0, block_mask=True, device=CPU)[0])
                    for i in range(10))
    assert float(together) == pytest.approx(alone, rel=1e-5)
    assert stats.sequences == 10 and stats.trained_tokens == trained_tokens(data, packed)


def test_loss_is_computed_in_fp32_from_bf16_logits():
    """A bf16 model gives bf16 logits; the loss must be the fp32 cross-entropy of those logits
    (a bf16 log-softmax and sum lose about 2 decimal digits over a batch)."""
    import torch.nn.functional as F

    model = tiny_llama().to(torch.bfloat16)
    data = random_examples(8, seed=11)
    rows = [[0, 1], [2, 3], [4, 5], [6, 7]]
    with torch.no_grad():
        loss, stats = forward_loss(model, data, rows, pad_id=0, block_mask=True, device=CPU)
        batch = collate(data, rows, pad_id=0, block_mask=True)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    targets = batch["labels"][:, 1:].reshape(-1)
    exact = F.cross_entropy(logits[:, :-1].double().reshape(-1, logits.size(-1)), targets, reduction="sum")
    in_bf16 = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets, reduction="sum")
    assert float(loss) == pytest.approx(float(exact), rel=1e-6)
    assert abs(float(in_bf16) - float(exact)) > 1e3 * abs(float(loss) - float(exact))  # the test can tell them apart
    assert stats.loss_sum == pytest.approx(float(exact), rel=1e-6)
