"""The one loss llmft trains and evaluates with: `forward_loss` on a micro-batch.

The rule, and why: the loss of an optimizer step is the mean cross-entropy over the trained
tokens of the *whole global batch*, however the batch is split over workers and accumulation
steps. So each micro-batch's loss is a *sum* over its trained tokens, scaled by
`world_size / trained tokens of the global batch` (`loss_scale`) before backward; DeepSpeed then
averages gradients over the workers (dividing by world_size again) and llmft tells it not to
divide by the accumulation count. The result is the exact per-token mean, not a mean of
per-micro-batch means (which over-weights short micro-batches).

The logits are never materialised whole. At small scale the logits of a 49k (or 128k)
vocabulary are the largest activation: for 512 tokens, 100 MB in fp32, plus the log-softmax the
loss keeps and the gradient of both. So the model stops at its final hidden states
(`logits_to_keep` selects no position), only the positions that carry a trained label go
through the output projection, and they go a chunk at a time (`chunked_cross_entropy`): each
chunk's logits give its loss, its argmax and, when training, its gradient at once, and are then
dropped. This is the idea of Liger's fused linear cross-entropy and torchtune's chunked loss,
with the gradient computed in the forward so backward does no second projection.

The loss runs inside the forward of the model's output projection (`OutputProjection`, put in
place by `use_output_projection` before DeepSpeed wraps the model), so DeepSpeed ZeRO-3 gathers
the partitioned weight for it and again for its backward, as for any layer.
"""

from __future__ import annotations

from typing import Sequence

import torch

from llmft.data.batching import PackedRow, TokenizedExamples, collate
from llmft.train.stats import TokenStats

# Logits of one chunk: 2**22 fp32 values (16 MB), e.g. 85 positions of a 49,152-token vocabulary.
# Measured on 2 CPU cores (1,024 positions, hidden 576, forward + backward): chunks of 64-128
# positions took 2.0 s, 341 positions 3.4 s and the whole logits at once 3.9 s; a chunk that fits
# in the cache is also the fastest.
CHUNK_LOGITS = 2**22


def forward_loss(model, data: TokenizedExamples, rows: Sequence[PackedRow], *, pad_id: int, block_mask: bool,
                 device: torch.device) -> tuple[torch.Tensor, TokenStats]:
    """Collate `rows` of `data`, run the model, and return the summed loss and its counts."""
    batch = {k: v.to(device) for k, v in collate(data, rows, pad_id=pad_id, block_mask=block_mask).items()}
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                    position_ids=batch["position_ids"], use_cache=False, output_hidden_states=True,
                    logits_to_keep=torch.zeros(0, dtype=torch.long, device=device))
    # transformers gives the final (normed) hidden states as the last entry for every language model.
    return next_token_loss(outputs.hidden_states[-1], getattr(model, "module", model).get_output_embeddings(),
                           batch["labels"], batch["segment_ids"])


class OutputProjection(torch.nn.Module):
    """A causal LM's output projection (the same `weight`, and `bias` if any, under the same
    state-dict keys) whose forward also computes the chunked loss: `projection(hidden)` gives
    logits like the linear layer it replaces, `projection(hidden, targets)` the summed
    cross-entropy and each position's correctness."""

    def __init__(self, linear: torch.nn.Module):
        super().__init__()
        self.weight = linear.weight
        self.bias = getattr(linear, "bias", None)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None):
        if targets is None:
            return torch.nn.functional.linear(hidden, self.weight, self.bias)
        return chunked_cross_entropy(hidden, self.weight, targets, bias=self.bias)


def use_output_projection(model) -> None:
    """Put an `OutputProjection` in place of `model`'s output embeddings (tied weights stay tied:
    it holds the same parameter). Call it before `deepspeed.initialize`, which hooks every module."""
    current = model.get_output_embeddings()
    if not isinstance(current, OutputProjection):
        model.set_output_embeddings(OutputProjection(current))


def loss_scale(world_size: int, global_batch_trained_tokens: int) -> float:
    """The factor for a micro-batch's summed loss before backward (see the module docstring)."""
    return world_size / max(global_batch_trained_tokens, 1)


def next_token_loss(hidden: torch.Tensor, output_embeddings: torch.nn.Module, labels: torch.Tensor,
                    segment_ids: torch.Tensor) -> tuple[torch.Tensor, TokenStats]:
    """Summed next-token cross-entropy over trained tokens, and the counts that go with it.

    `hidden` are the final hidden states [rows, length, hidden]; `output_embeddings` the model's
    output projection (its `weight` is [vocab, hidden]).
    """
    targets = labels[:, 1:]
    trained = targets != -100
    if not isinstance(output_embeddings, OutputProjection):  # a model set up without use_output_projection
        if hasattr(output_embeddings.weight, "ds_id"):
            raise RuntimeError("A ZeRO-3 model needs use_output_projection(model) before deepspeed.initialize: "
                               "its partitioned output projection is gathered only inside a module's forward.")
        output_embeddings = OutputProjection(output_embeddings)
    loss_sum, correct = output_embeddings(hidden[:, :-1][trained], targets[trained])
    with torch.no_grad():
        # One slot per (row, segment): a sequence is right when no trained token in it is wrong.
        segments = segment_ids[:, 1:]
        slots = segments.size(1) + 1
        slot = (torch.arange(segments.size(0), device=segments.device)[:, None] * slots + segments)[trained]
        has_trained = torch.bincount(slot, minlength=segments.size(0) * slots) > 0
        wrong = torch.bincount(slot, weights=(~correct).float(), minlength=segments.size(0) * slots) > 0
        stats = TokenStats(
            loss_sum=float(loss_sum.detach()),
            trained_tokens=int(trained.sum()),
            correct_tokens=int(correct.sum()),
            sequences=int(has_trained.sum()),
            correct_sequences=int((has_trained & ~wrong).sum()),
            tokens=int((segment_ids > 0).sum()),
        )
    return loss_sum, stats


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk_size: int | None = None, bias: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of the logits `hidden @ weight.T + bias` (in fp32) against `targets`,
    and whether each position's argmax is its target, computed `chunk_size` positions at a time.

    `hidden` is [positions, hidden] and `targets` [positions]; every target is trained.
    """
    chunk_size = chunk_size or max(1, CHUNK_LOGITS // weight.shape[0])
    with_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    return _ChunkedCrossEntropy.apply(hidden, weight, bias, targets, chunk_size, with_grad)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and, when training, the gradients of `hidden` and `weight` for a
    loss gradient of 1; backward scales them by the actual loss gradient (a scalar)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size, with_grad):
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.empty(targets.shape, dtype=torch.bool, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if with_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if with_grad else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if with_grad and bias is not None else None
        for start in range(0, hidden.shape[0], chunk_size):
            h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
            logits = (h @ weight.t() if bias is None else torch.addmm(bias, h, weight.t())).float()
            log_norm = torch.logsumexp(logits, dim=-1)
            loss += (log_norm - logits.gather(1, t[:, None]).squeeze(1)).sum()
            correct[start:start + chunk_size] = logits.argmax(-1) == t
            if with_grad:
                # d(sum of cross-entropies)/d(logits) = softmax - one_hot(target), computed in place.
                grad_logits = logits.sub_(log_norm[:, None]).exp_()
                grad_logits[torch.arange(len(t), device=t.device), t] -= 1
                grad_logits = grad_logits.to(hidden.dtype)
                grad_hidden[start:start + chunk_size] = grad_logits @ weight
                if weight.dtype == torch.float32:
                    grad_weight.addmm_(grad_logits.t(), h)
                else:  # 16-bit weights: sum the chunks' products in fp32, not rounded per chunk
                    grad_weight += (grad_logits.t() @ h).float()
                if grad_bias is not None:
                    grad_bias += grad_logits.float().sum(0)
        ctx.mark_non_differentiable(correct)
        if with_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype),
                                  None if grad_bias is None else grad_bias.to(bias.dtype))
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        grads = [None if g is None else g * grad_loss.to(g.dtype) for g in ctx.saved_tensors]
        return grads[0], grads[1], grads[2], None, None, None
