"""Packing, the epoch plan and the per-worker split: the properties training relies on."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from llmft.data.batching import (
    collate,
    pack_examples,
    plan_epoch,
    trained_tokens,
    worker_micro_batches,
)
from llmft.train.loss import forward_loss
from tests.support.batches import random_examples, tiny_llama


def test_pack_respects_max_length_and_uses_each_example_once():
    lengths = [random.Random(i).randint(1, 50) for i in range(500)]
    rows = pack_examples(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert sum(lengths) / (len(rows) * 64) > 0.9  # best-fit-decreasing packs tightly


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("world_size,micro", [(1, 8), (2, 2), (4, 1), (2, 4)])
def test_every_example_exactly_once_per_epoch_across_workers(packing, world_size, micro):
    columns = random_examples(203)
    global_batch = 8
    for epoch in range(3):
        plan = plan_epoch(columns.lengths, epoch=epoch, seed=7, max_length=32, packing=packing,
                          global_batch_size=global_batch)
        seen = Counter()
        for batch in plan:
            assert len(batch) == global_batch
            for rank in range(world_size):
                micro_batches = worker_micro_batches(batch, rank=rank, world_size=world_size, micro_batch_size=micro)
                assert len(micro_batches) == global_batch // (world_size * micro)
                seen.update(i for rows in micro_batches for row in rows for i in row)
        assert set(seen.values()) == {1} and len(seen) == 203


def test_plan_is_reshuffled_per_epoch_and_reproducible():
    lengths = random_examples(100).lengths
    kwargs = dict(seed=3, max_length=32, packing=True, global_batch_size=4)
    assert plan_epoch(lengths, epoch=0, **kwargs) == plan_epoch(lengths, epoch=0, **kwargs)
    assert plan_epoch(lengths, epoch=0, **kwargs) != plan_epoch(lengths, epoch=1, **kwargs)


def test_global_batch_is_independent_of_worker_split():
    """The same global batch gives the same rows whatever the worker/micro split."""
    batch = plan_epoch(random_examples(64).lengths, epoch=0, seed=1, max_length=32, packing=True, global_batch_size=8)[0]
    def rows_of(world, micro):
        return sorted(tuple(r) for rank in range(world)
                      for rows in worker_micro_batches(batch, rank=rank, world_size=world, micro_batch_size=micro)
                      for r in rows)
    assert rows_of(1, 8) == rows_of(2, 2) == rows_of(4, 2)


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_llama()


def test_packed_and_unpacked_give_the_same_per_token_loss(tiny_model):
    columns = random_examples(12, seed=5)
    rows = pack_examples(columns.lengths, 40)
    assert any(len(row) > 1 for row in rows)
    cpu = torch.device("cpu")
    with torch.no_grad():
        packed_sum, packed_stats = forward_loss(tiny_model, columns, rows, pad_id=0, block_mask=True, device=cpu)
        single_sum, single_tokens = 0.0, 0
        for i in range(12):
            loss, stats = forward_loss(tiny_model, columns, [[i]], pad_id=0, block_mask=False, device=cpu)
            single_sum += float(loss)
            single_tokens += stats.trained_tokens
    assert packed_stats.trained_tokens == single_tokens == trained_tokens(columns, [[i] for i in range(12)])
    assert abs(float(packed_sum) / packed_stats.trained_tokens - single_sum / single_tokens) < 1e-5
    assert packed_stats.sequences == 12


def test_padded_batch_matches_unpadded(tiny_model):
    columns = random_examples(6, seed=9)
    cpu = torch.device("cpu")
    with torch.no_grad():
        total, stats = forward_loss(tiny_model, columns, [[i] for i in range(6)], pad_id=0, block_mask=True,
                                    device=cpu)
        reference = sum(float(forward_loss(tiny_model, columns, [[i]], pad_id=0, block_mask=False, device=cpu)[0])
                        for i in range(6))
    assert abs(float(total) - reference) / stats.trained_tokens < 1e-5


def test_flash_attention_layout_is_one_row_whose_positions_mark_every_example():
    """Under flash_attention_2 (no block mask) transformers finds example boundaries from the
    position ids only in a single-row batch (`_is_packed_sequence`); several rows would let packed
    examples attend to each other on a GPU. The flattened row must give flash-attention's varlen
    kernel one sequence per example, and drop the padding."""
    from transformers.modeling_flash_attention_utils import _is_packed_sequence, prepare_fa_kwargs_from_position_ids

    columns = random_examples(9, seed=4)
    rows = [[0, 1, 2], [3], [4, 5], [], [6, 7, 8]]
    batch = collate(columns, rows, pad_id=0, block_mask=False)
    lengths = [len(columns.input_ids[i]) for row in rows for i in row]
    assert "attention_mask" not in batch
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert batch["input_ids"][0].tolist() == [t for row in rows for i in row for t in columns.input_ids[i]]
    assert batch["labels"][0].tolist() == [t for row in rows for i in row for t in columns.labels[i]]
    assert _is_packed_sequence(batch["position_ids"], batch_size=batch["input_ids"].shape[0])
    (cu_seqlens, _), (max_length, _) = prepare_fa_kwargs_from_position_ids(batch["position_ids"])
    assert cu_seqlens.tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert int(max_length) == max(lengths)
    assert batch["segment_ids"][0].unique().tolist() == list(range(1, 10))  # one segment per example
    only_fillers = collate(columns, [[], []], pad_id=0, block_mask=False)
    assert only_fillers["input_ids"].shape == (1, 1) and (only_fillers["labels"] == -100).all()
