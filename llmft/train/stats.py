"""Every training number llmft shows, defined once: token counts that add up across micro-batches
and workers, the metrics made from them, and MFU."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.distributed as dist

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


def all_reduce(stats: TokenStats, device: torch.device) -> TokenStats:
    """The sum of every worker's counts (on every worker)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return stats
    values = stats.as_tensor().to(device)
    dist.all_reduce(values)
    return TokenStats.from_tensor(values.cpu())


def mfu(num_params: int, tokens_per_second_per_device: float, device_name: str | None) -> float | None:
    """Model FLOPs utilisation: 6 x params FLOPs per token (forward + backward) over the device's
    peak dense 16-bit throughput. Recomputed activations are not counted (that is what MFU means)."""
    peak = peak_flops(device_name)
    return None if peak is None else 6 * num_params * tokens_per_second_per_device / peak


def peak_flops(device_name: str | None) -> float | None:
    """The peak of the device `torch.cuda.get_device_name` names, or None for one not in the table.

    The most specific name wins: "NVIDIA L40S" is an L40S, not an L4.
    """
    if not device_name:
        return None
    names = [name for name in PEAK_BF16_FLOPS if name in device_name.upper()]
    return PEAK_BF16_FLOPS[max(names, key=len)] if names else None
