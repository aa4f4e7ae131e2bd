"""The one loss llmft trains and evaluates with: `forward_loss` on a micro-batch.

The rule, and why: the loss of an optimizer step is the mean cross-entropy over the trained
tokens of the *whole global batch*, however the batch is split over workers and accumulation
steps. So each micro-batch's loss is a *sum* over its trained tokens, scaled by
`world_size / trained tokens of the global batch` (`loss_scale`) before backward; DeepSpeed then
averages gradients over the workers (dividing by world_size again) and llmft tells it not to
divide by the accumulation count. The result is the exact per-token mean, not a mean of
per-micro-batch means (which over-weights short micro-batches).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from llmft.data.batching import PackedRow, TokenizedExamples, collate
from llmft.train.stats import TokenStats


def forward_loss(model, data: TokenizedExamples, rows: Sequence[PackedRow], *, pad_id: int, block_mask: bool,
                 device: torch.device) -> tuple[torch.Tensor, TokenStats]:
    """Collate `rows` of `data`, run the model, and return the summed loss and its counts."""
    batch = {k: v.to(device) for k, v in collate(data, rows, pad_id=pad_id, block_mask=block_mask).items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                   position_ids=batch["position_ids"], use_cache=False).logits
    return next_token_loss(logits, batch["labels"], batch["segment_ids"])


def loss_scale(world_size: int, global_batch_trained_tokens: int) -> float:
    """The factor for a micro-batch's summed loss before backward (see the module docstring)."""
    return world_size / max(global_batch_trained_tokens, 1)


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, segment_ids: torch.Tensor) -> tuple[torch.Tensor, TokenStats]:
    """Summed next-token cross-entropy over trained tokens, and the counts that go with it."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    segments = segment_ids[:, 1:]
    trained = targets != -100
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-100, reduction="sum")
    with torch.no_grad():
        correct = (logits.argmax(-1) == targets) & trained
        # One slot per (row, segment): a sequence is right when no trained token in it is wrong.
        slots = segments.size(1) + 1
        slot = (torch.arange(segments.size(0), device=segments.device)[:, None] * slots + segments)[trained]
        has_trained = torch.bincount(slot, minlength=segments.size(0) * slots) > 0
        wrong = torch.bincount(slot, weights=(~correct[trained]).float(), minlength=segments.size(0) * slots) > 0
        stats = TokenStats(
            loss_sum=float(loss_sum.detach()),
            trained_tokens=int(trained.sum()),
            correct_tokens=int(correct.sum()),
            sequences=int(has_trained.sum()),
            correct_sequences=int((has_trained & ~wrong).sum()),
            tokens=int((segment_ids > 0).sum()),
        )
    return loss_sum, stats
