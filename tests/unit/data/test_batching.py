"""Packing, the epoch plan and the per-worker split: the properties training relies on."""

from __future__ import annotations

import pickle
import random
import tracemalloc
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch

from llmft.data.batching import (
    TokenizedExamples,
    collate,
    pack_examples,
    plan_epoch,
    trained_tokens,
    worker_micro_batches,
)
from llmft.train.loss import forward_loss
from tests.support.batches import examples_of, random_examples, tiny_llama


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
    lengths = [len(columns.example(i)[0]) for row in rows for i in row]
    assert "attention_mask" not in batch
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert batch["input_ids"][0].tolist() == [t for row in rows for i in row for t in columns.example(i)[0].tolist()]
    assert batch["labels"][0].tolist() == [t for row in rows for i in row for t in columns.example(i)[1].tolist()]
    assert _is_packed_sequence(batch["position_ids"], batch_size=batch["input_ids"].shape[0])
    (cu_seqlens, _), (max_length, _) = prepare_fa_kwargs_from_position_ids(batch["position_ids"])
    assert cu_seqlens.tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert int(max_length) == max(lengths)
    assert batch["segment_ids"][0].unique().tolist() == list(range(1, 10))  # one segment per example
    only_fillers = collate(columns, [[], []], pad_id=0, block_mask=False)
    assert only_fillers["input_ids"].shape == (1, 1) and (only_fillers["labels"] == -100).all()


def _best_fit_decreasing(lengths, max_length, order):
    """Best-fit decreasing one example at a time: the definition `pack_examples` implements."""
    rows, free = [], []  # free: (free tokens, row number), sorted
    for index in sorted(order, key=lambda i: -lengths[i]):
        need = lengths[index]
        fitting = [slot for slot in free if slot[0] >= need]
        if fitting:
            space, row = fitting[0]
            free.remove((space, row))
        else:
            space, row = max_length, len(rows)
            rows.append([])
        rows[row].append(index)
        if space - need:
            free = sorted(free + [(space - need, row)])
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_packing_is_best_fit_decreasing_with_ties_in_the_given_order(seed):
    # Fails if the run-at-a-time packing places any example elsewhere than one-at-a-time best
    # fit would (a changed plan would change every loss of a run).
    rng = random.Random(seed)
    max_length = rng.choice([16, 64, 512])
    lengths = [rng.randint(1, rng.choice([max_length, max_length // 4])) for _ in range(rng.choice([1, 50, 400]))]
    order = list(range(len(lengths)))
    rng.shuffle(order)
    assert list(pack_examples(lengths, max_length, order)) == _best_fit_decreasing(lengths, max_length, order)


def test_every_epoch_has_as_many_steps():
    # The loop sizes the LR schedule from the first epoch's plan and plans later epochs lazily.
    lengths = [random.Random(i).randint(1, 60) for i in range(1000)]
    for packing in (True, False):
        sizes = {len(plan_epoch(lengths, epoch=e, seed=5, max_length=64, packing=packing, global_batch_size=8))
                 for e in range(6)}
        assert len(sizes) == 1


def test_collate_lays_out_packed_rows_fillers_and_padding():
    columns = examples_of([[1, 5, 6], [1, 7], [1, 8, 9, 4]], [[-100, 5, 6], [-100, 7], [-100, -100, 9, 4]])
    batch = collate(columns, [[0, 1], [], [2]], pad_id=0, block_mask=True)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 1, 7], [0, 0, 0, 0, 0], [1, 8, 9, 4, 0]]
    assert batch["labels"].tolist() == [[-100, 5, 6, -100, 7], [-100] * 5, [-100, -100, 9, 4, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 4], [0, 1, 2, 3, 0]]
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 2, 2], [0, 0, 0, 0, 0], [1, 1, 1, 1, 0]]
    assert all(batch[key].dtype == torch.long for key in ("input_ids", "labels", "position_ids", "segment_ids"))


# ------------------------------------------------------------------ the worker's view of the data


def _tokenized_table(examples: int, tokens: int, chunks: int = 1) -> pa.Table:
    """A tokenized table built from flat arrays (as tokenize.py builds it), `tokens` per example."""
    parts = []
    for _ in range(chunks):
        offsets = pa.array(np.arange(0, examples * tokens + 1, tokens, dtype=np.int32))
        ids = pa.ListArray.from_arrays(offsets, pa.array(np.arange(examples * tokens, dtype=np.int32) % 1000))
        labels = pa.ListArray.from_arrays(offsets, pa.array(np.full(examples * tokens, 7, dtype=np.int32)))
        parts.append(pa.table({"input_ids": ids, "labels": labels,
                               "num_trained": pa.array(np.full(examples, tokens, dtype=np.int32))}))
    return pa.concat_tables(parts)


def test_a_workers_view_is_zero_copy_with_no_python_object_per_example():
    """Fails if a worker converts the data (to_pylist, a numpy copy, per-example arrays): the view
    would allocate memory in proportion to the data and hold buffers of its own."""
    table = _tokenized_table(100_000, 20)
    data_bytes = table.nbytes
    tracemalloc.start()
    examples = TokenizedExamples.from_table(table)
    allocated = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert allocated < data_bytes / 100, f"{allocated} bytes allocated for {data_bytes} bytes of data"
    for column, array in (("input_ids", examples.input_ids), ("labels", examples.labels)):
        arrow_values = table.column(column).chunk(0).values.buffers()[1]
        assert array.__array_interface__["data"][0] == arrow_values.address
    assert examples.input_ids.dtype == np.int32 and len(examples) == 100_000

    # Through pickle protocol 5, as Ray's object store serialises it: the arrays travel as
    # out-of-band buffers, and the loaded object views those buffers (the store's shared memory).
    buffers = []
    stream = pickle.dumps(examples, protocol=5, buffer_callback=buffers.append)
    assert len(stream) < 2000 and sum(b.raw().nbytes for b in buffers) >= examples.input_ids.nbytes
    shipped = [np.frombuffer(b.raw(), dtype=np.uint8) for b in buffers]
    loaded = pickle.loads(stream, buffers=shipped)
    assert any(np.shares_memory(loaded.input_ids, b) for b in shipped)
    assert any(np.shares_memory(loaded.labels, b) for b in shipped)
    ids, labels = loaded.example(99_999)
    assert ids.tolist() == [t % 1000 for t in range(99_999 * 20, 100_000 * 20)] and labels.tolist() == [7] * 20


def test_a_table_of_several_shards_gives_the_same_examples():
    one = TokenizedExamples.from_table(_tokenized_table(50, 3, chunks=1).combine_chunks())
    three = TokenizedExamples.from_table(pa.concat_tables([_tokenized_table(50, 3)] * 3))
    assert len(three) == 150 and three.offsets.dtype == np.int64
    for i in (0, 49, 50, 149):
        assert three.example(i)[0].tolist() == one.example(i % 50)[0].tolist()
    sliced = TokenizedExamples.from_table(_tokenized_table(50, 3).slice(10, 5))
    assert sliced.example(0)[0].tolist() == one.example(10)[0].tolist() and len(sliced) == 5
