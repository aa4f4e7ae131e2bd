"""Every training number llmft shows, defined once.

Losses are sums over trained tokens here; they become means only after the sums of all
micro-batches and workers of a step are added up, so the loss is per trained token of the whole
global batch (not a mean of per-micro-batch means, which over-weights short micro-batches).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

# Peak dense bf16 tensor throughput, for MFU. Unknown devices get no MFU rather than a wrong one.
PEAK_BF16_FLOPS = {"A10G": 125e12, "A100": 312e12, "H100": 989e12, "L4": 121e12, "A6000": 155e12, "L40S": 362e12}


@dataclass
class TokenStats:
    """Additive counts for a set of sequences; sum them across micro-batches and workers."""

    loss_sum: float = 0.0          # cross-entropy summed over trained tokens
    trained_tokens: int = 0        # tokens whose prediction is trained (label != -100)
    correct_tokens: int = 0        # trained tokens predicted right by argmax
    sequences: int = 0             # examples with at least one trained token
    correct_sequences: int = 0     # examples whose every trained token is predicted right
    tokens: int = 0                # real (non-padding) tokens processed

    def add(self, other: "TokenStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([float(getattr(self, f.name)) for f in fields(self)], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> "TokenStats":
        kinds = [f.type for f in fields(cls)]
        return cls(*[float(v) if kind == "float" else int(round(float(v))) for v, kind in zip(values.tolist(), kinds)])

    def metrics(self, prefix: str) -> dict[str, float]:
        """`<prefix>_loss`, `<prefix>_token_accuracy`, `<prefix>_sequence_accuracy`."""
        loss = self.loss_sum / max(self.trained_tokens, 1)
        return {
            f"{prefix}_loss": loss,
            f"{prefix}_token_accuracy": self.correct_tokens / max(self.trained_tokens, 1),
            f"{prefix}_sequence_accuracy": self.correct_sequences / max(self.sequences, 1),
        }


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


def mfu(num_params: int, tokens_per_second_per_device: float, device_name: str | None) -> float | None:
    """Model FLOPs utilisation: 6 x params FLOPs per token (forward + backward) over peak."""
    if not device_name:
        return None
    peak = next((flops for name, flops in PEAK_BF16_FLOPS.items() if name in device_name), None)
    return None if peak is None else 6 * num_params * tokens_per_second_per_device / peak
