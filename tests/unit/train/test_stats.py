"""Training numbers defined once: token counts that add up, and MFU."""

from __future__ import annotations

import pytest

from llmft.train.stats import PEAK_BF16_FLOPS, TokenStats, mfu, peak_flops


@pytest.mark.parametrize("device_name, peak", [
    ("NVIDIA A10G", PEAK_BF16_FLOPS["A10G"]),
    ("NVIDIA A100-SXM4-80GB", PEAK_BF16_FLOPS["A100"]),
    ("NVIDIA H100 80GB HBM3", PEAK_BF16_FLOPS["H100"]),
    ("NVIDIA L4", PEAK_BF16_FLOPS["L4"]),
    ("NVIDIA L40S", PEAK_BF16_FLOPS["L40S"]),  # was read as an L4 (the first name contained in it)
    ("NVIDIA RTX A6000", PEAK_BF16_FLOPS["A6000"]),
    ("Tesla T4", None),
    (None, None),
])
def test_peak_of_each_device_name(device_name, peak):
    assert peak_flops(device_name) == peak


def test_mfu_is_six_flops_per_parameter_and_token_over_the_peak():
    # A 7B model at 1,000 tokens/s per A100: 6 * 7e9 * 1e3 / 312e12.
    assert mfu(7_000_000_000, 1000.0, "NVIDIA A100-SXM4-40GB") == pytest.approx(0.1346, abs=1e-4)
    assert mfu(7_000_000_000, 1000.0, "Tesla T4") is None


def test_token_stats_add_up_and_round_trip():
    a = TokenStats(loss_sum=2.5, trained_tokens=3, correct_tokens=2, sequences=1, correct_sequences=1, tokens=7)
    b = TokenStats(loss_sum=1.5, trained_tokens=2, correct_tokens=0, sequences=1, correct_sequences=0, tokens=4)
    a.add(b)
    assert TokenStats.from_tensor(a.as_tensor()) == a == TokenStats(4.0, 5, 2, 2, 1, 11)
    assert a.metrics("train") == {"train_loss": 0.8, "train_token_accuracy": 0.4, "train_sequence_accuracy": 0.5}
