"""From tokenized examples to the micro-batches each worker trains on.

The whole epoch is planned from the example lengths, the seed and the epoch number alone, so
every worker computes the same plan without talking to the others:

    plan_epoch -> global batches -> rows (one packed or padded sequence each) -> example indices

A global batch holds exactly `global_batch_size` rows whatever the number of workers; worker
`rank` trains on its own contiguous slice of it. So a run is invariant to how the global batch
is split (2 workers x micro 2 x accumulation 2 trains on the same sequences as 1 worker x micro
8), every example is seen exactly once per epoch, and a resumed run recomputes the plan and
skips to its step. (Ray Data's streaming split hands blocks to whichever worker asks first,
which gives neither property.)

The last global batch of an epoch is filled up with empty rows, which carry no trained tokens
and so change neither the loss nor the gradients.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

PackedRow = list[int]  # indices of the examples in one sequence; [] is an empty filler row
GlobalBatch = list[PackedRow]

# Rows are sorted by length inside windows of this many global batches before they are cut into
# global batches, so micro-batches hold sequences of similar length (little padding) while the
# batches themselves stay shuffled.
LENGTH_GROUPING_WINDOW = 8


def pack_examples(lengths: Sequence[int], max_length: int, order: Sequence[int] | None = None) -> list[PackedRow]:
    """Best-fit-decreasing packing of examples into rows of at most `max_length` tokens.

    `order` breaks ties between equal lengths (pass a shuffled order for per-epoch variety).
    """
    order = list(range(len(lengths))) if order is None else list(order)
    by_length = sorted(order, key=lambda i: -lengths[i])  # stable: ties keep `order`
    rows: list[PackedRow] = []
    free: list[tuple[int, int]] = []  # (free tokens, row id), sorted
    for index in by_length:
        need = lengths[index]
        if need > max_length:
            raise ValueError(f"example {index} has {need} tokens, more than max_length {max_length}")
        slot = bisect.bisect_left(free, (need, -1))
        if slot == len(free):
            rows.append([index])
            remaining, row_id = max_length - need, len(rows) - 1
        else:
            remaining, row_id = free.pop(slot)
            rows[row_id].append(index)
            remaining -= need
        if remaining > 0:
            bisect.insort(free, (remaining, row_id))
    return rows


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


def plan_epoch(lengths: Sequence[int], *, epoch: int, seed: int, max_length: int, packing: bool,
               global_batch_size: int) -> list[GlobalBatch]:
    """The epoch's global batches of rows, the same on every worker."""
    rng = epoch_rng(seed, epoch)
    order = rng.permutation(len(lengths)).tolist()
    if packing:
        rows = pack_examples(lengths, max_length, order)
        rows = [rows[i] for i in rng.permutation(len(rows))]
    else:
        rows = [[i] for i in order]
    row_length = [sum(lengths[i] for i in row) for row in rows]
    window = global_batch_size * LENGTH_GROUPING_WINDOW
    grouped: list[PackedRow] = []
    for start in range(0, len(rows), window):
        chunk = sorted(range(start, min(start + window, len(rows))), key=lambda r: -row_length[r])
        grouped.extend(rows[r] for r in chunk)
    batches = [grouped[i:i + global_batch_size] for i in range(0, len(grouped), global_batch_size)]
    if batches and len(batches[-1]) < global_batch_size:
        batches[-1] = batches[-1] + [[] for _ in range(global_batch_size - len(batches[-1]))]
    # Shuffle the batches so long and short ones alternate through the epoch.
    return [batches[i] for i in rng.permutation(len(batches))]


def worker_micro_batches(batch: GlobalBatch, *, rank: int, world_size: int, micro_batch_size: int) -> list[list[PackedRow]]:
    """The micro-batches (in order) that worker `rank` trains on for one global batch."""
    per_worker = len(batch) // world_size
    mine = batch[rank * per_worker:(rank + 1) * per_worker]
    return [mine[i:i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]


@dataclass
class TokenizedExamples:
    """The tokenized examples, as plain Python lists for fast random access."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    num_trained: list[int]

    @classmethod
    def from_table(cls, table) -> "TokenizedExamples":
        return cls(table.column("input_ids").to_pylist(), table.column("labels").to_pylist(),
                   table.column("num_trained").to_pylist())

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def trained_tokens(examples: TokenizedExamples, batch: GlobalBatch) -> int:
    """Trained (unmasked) tokens in a global batch: the loss is normalised by this count."""
    return sum(examples.num_trained[i] for row in batch for i in row)


def collate(examples: TokenizedExamples, rows: list[PackedRow], *, pad_id: int, block_mask: bool) -> dict[str, torch.Tensor]:
    """Tensors for one micro-batch.

    Each example gets its own segment id (0 = padding) and positions restarting at 0.
    With `block_mask` (sdpa/eager attention) the rows are padded to the longest and carry a 4D
    boolean mask that lets a token see only earlier tokens of its own example.
    Without it (flash-attention 2) the micro-batch is flattened into a single row without padding
    (transformers' padding-free layout): transformers' flash-attention path finds the examples
    from restarting position_ids only when the batch has one row; with several rows and no mask
    it would let packed examples attend to each other.
    """
    width = max([sum(len(examples.input_ids[i]) for i in row) for row in rows] + [1])
    size = (len(rows), width)
    input_ids = torch.full(size, pad_id, dtype=torch.long)
    labels = torch.full(size, -100, dtype=torch.long)
    position_ids = torch.zeros(size, dtype=torch.long)
    segment_ids = torch.zeros(size, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for segment, index in enumerate(row, start=1):
            ids = examples.input_ids[index]
            end = start + len(ids)
            input_ids[r, start:end] = torch.tensor(ids)
            labels[r, start:end] = torch.tensor(examples.labels[index])
            position_ids[r, start:end] = torch.arange(len(ids))
            segment_ids[r, start:end] = segment
            start = end
        position_ids[r, start:] = torch.arange(width - start)
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "segment_ids": segment_ids}
    if not block_mask:
        return _flattened(batch)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    # Padding attends to itself only, so no query row is fully masked (that gives NaNs).
    eye = torch.eye(width, dtype=torch.bool)
    real = (segment_ids > 0)[:, :, None]
    batch["attention_mask"] = ((same & causal & real) | eye)[:, None, :, :]
    return batch


def _flattened(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The rows' real tokens in one row, segment ids renumbered to stay one per example."""
    segments = batch["segment_ids"]
    real = segments > 0
    if not real.any():  # only filler rows: one padding token
        return {key: value[:1, :1] for key, value in batch.items()}
    per_row = segments.max(dim=1).values
    offsets = torch.cumsum(per_row, 0) - per_row
    batch = {**batch, "segment_ids": torch.where(real, segments + offsets[:, None], 0)}
    return {key: value[real][None, :] for key, value in batch.items()}
