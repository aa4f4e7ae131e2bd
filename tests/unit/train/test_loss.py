"""The one loss: `forward_loss` (collate, forward, summed loss and counts), its chunked
cross-entropy, and the scaling rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmft.data.batching import (
    collate,
    pack_examples,
    trained_tokens,
    worker_micro_batches,
)
from llmft.train.loss import (
    OutputProjection,
    chunked_cross_entropy,
    forward_loss,
    loss_scale,
    next_token_loss,
    use_output_projection,
)
from tests.support.batches import random_examples, tiny_llama

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_llama()


def full_logits_loss(model, batch) -> torch.Tensor:
    """The textbook loss: whole fp32 logits, shifted, cross-entropy summed over trained labels."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits.float()
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1),
                           ignore_index=-100, reduction="sum")


def test_forward_loss_and_its_gradients_equal_the_full_logits_loss(tiny_model):
    # Fails if the chunked loss shifts labels wrongly, trains a masked position, drops a chunk,
    # or gets the gradient of the hidden states or of the output projection wrong.
    model = tiny_llama(hidden_size=16, layers=1).train()
    data = random_examples(6, seed=1)
    rows = [[0, 1], [2], [3, 4, 5]]
    batch = collate(data, rows, pad_id=0, block_mask=True)
    reference = full_logits_loss(model, batch)
    reference.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    loss, stats = forward_loss(model, data, rows, pad_id=0, block_mask=True, device=CPU)
    (loss * 0.5).backward()
    assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-6)
    assert stats.loss_sum == pytest.approx(float(reference.detach()), rel=1e-6)
    assert stats.trained_tokens == trained_tokens(data, rows)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 0.5 * expected[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunked_cross_entropy_matches_cross_entropy_at_any_chunk_size(chunk_size):
    # Fails if a chunk boundary loses or repeats positions, or the argmax flags go to the wrong rows.
    torch.manual_seed(0)
    hidden = torch.randn(150, 24, requires_grad=True)
    weight = (0.3 * torch.randn(90, 24)).requires_grad_()
    targets = torch.randint(0, 90, (150,))
    logits = hidden @ weight.t()
    reference = F.cross_entropy(logits, targets, reduction="sum")
    grad_hidden, grad_weight = torch.autograd.grad(3.0 * reference, [hidden, weight])
    loss, correct = chunked_cross_entropy(hidden, weight, targets, chunk_size)
    (3.0 * loss).backward()
    assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-6)
    assert torch.equal(correct, logits.argmax(-1) == targets)
    torch.testing.assert_close(hidden.grad, grad_hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weight.grad, grad_weight, rtol=1e-4, atol=1e-5)


def test_chunked_cross_entropy_with_a_bias():
    # Some families' output projections have a bias (e.g. Phi-2): its gradient is the summed softmax.
    torch.manual_seed(2)
    hidden = torch.randn(40, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    bias = torch.randn(30, requires_grad=True)
    targets = torch.randint(0, 30, (40,))
    reference = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="sum")
    expected = torch.autograd.grad(reference, [hidden, weight, bias])
    loss, _ = chunked_cross_entropy(hidden, weight, targets, 7, bias=bias)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-6)
    for got, want in zip([hidden.grad, weight.grad, bias.grad], expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_output_projection_replaces_the_linear_layer_without_changing_the_model():
    # Fails if the swap renames or copies the weight (checkpoints and exports would change, tied
    # embeddings would come apart) or changes what generation sees.
    for tied in (True, False):
        model = tiny_llama()
        model.config.tie_word_embeddings = tied
        if tied:
            model.lm_head.weight = model.model.embed_tokens.weight
        keys, hidden = list(model.state_dict()), torch.randn(1, 3, 32)
        before = model.lm_head(hidden)
        use_output_projection(model)
        assert isinstance(model.get_output_embeddings(), OutputProjection)
        assert list(model.state_dict()) == keys
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
        torch.testing.assert_close(model.lm_head(hidden), before)
        use_output_projection(model)  # idempotent
        assert isinstance(model.lm_head, OutputProjection)


def test_chunked_cross_entropy_of_bf16_is_computed_in_fp32():
    # The GPU path: 16-bit hidden states and weights, softmax and loss in fp32, the weight's
    # gradient summed over chunks in fp32. Fails if the loss comes from bf16 log-probabilities,
    # the chunks' weight gradients are summed in bf16, or the gradients come back in fp32.
    torch.manual_seed(1)
    hidden = torch.randn(64, 32).bfloat16().requires_grad_()
    weight = (0.2 * torch.randn(500, 32)).bfloat16().requires_grad_()
    targets = torch.randint(0, 500, (64,))
    exact = F.cross_entropy(hidden.float() @ weight.float().t(), targets, reduction="sum")
    exact_grads = torch.autograd.grad(exact, [hidden, weight])
    autograd_bf16 = torch.autograd.grad(F.cross_entropy((hidden @ weight.t()).float(), targets, reduction="sum"),
                                        [hidden, weight])
    loss, _ = chunked_cross_entropy(hidden, weight, targets, 1)  # 64 chunks: rounding per chunk would add up
    loss.backward()
    assert loss.dtype == torch.float32
    assert float(loss.detach()) == pytest.approx(float(exact.detach()), rel=1e-3)
    assert hidden.grad.dtype == weight.grad.dtype == torch.bfloat16

    def error(got, want):
        return float((got.float() - want.float()).norm() / want.float().norm())

    for got, bf16, want in zip([hidden.grad, weight.grad], autograd_bf16, exact_grads):
        assert error(got, want) < 1e-2
        assert error(got, want) <= 1.5 * error(bf16, want)  # no worse than plain bf16 autograd


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
    # An identity output projection: the hidden state at a position is its logits.
    head = torch.nn.Linear(10, 10, bias=False)
    torch.nn.init.eye_(head.weight)
    hidden = torch.full((1, 6, 10), -10.0)
    # predictions for positions 1..5: right, right, (masked), right, wrong
    for pos, token in enumerate([5, 6, 0, 7, 9]):
        hidden[0, pos, token] = 10.0
    _, stats = next_token_loss(hidden, head, labels, segments)
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
