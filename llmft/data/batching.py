"""From tokenized examples to the micro-batches each worker trains on.

The data stay flat numpy arrays from the Arrow table to the collate: `TokenizedExamples` views
the table's buffers (one `values` array per column plus `offsets`), and an epoch's plan is a
few integer arrays. Nothing here makes a Python object per example, so a worker's memory for the
data is the data's own bytes (shared with the other workers of its node through Ray's object
store), and planning an epoch of a million examples takes well under a second.

Each epoch is planned from the example lengths, the seed and the epoch number alone, so every
worker computes the same plan without talking to the others:

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

from dataclasses import dataclass
from itertools import chain
from typing import Iterator, Sequence

import numpy as np
import torch

PackedRow = list[int]  # indices of the examples in one sequence; [] is an empty filler row
GlobalBatch = list[PackedRow]

# Rows are sorted by length inside windows of this many global batches before they are cut into
# global batches, so micro-batches hold sequences of similar length (little padding) while the
# batches themselves stay shuffled.
LENGTH_GROUPING_WINDOW = 8


# ------------------------------------------------------------------------------ the examples


@dataclass(frozen=True, eq=False)
class TokenizedExamples:
    """Tokenized examples as flat arrays: example `i` is `input_ids[offsets[i]:offsets[i + 1]]`
    (and the same slice of `labels`).

    `from_table` views the Arrow buffers without copying them. Pickled with protocol 5, as Ray's
    object store does, the arrays travel as out-of-band buffers: `ray.get` on a worker maps the
    node's one copy in shared memory instead of building its own.
    """

    input_ids: np.ndarray    # int32, every example's tokens end to end
    labels: np.ndarray       # int32, aligned with input_ids; -100 where no loss is computed
    offsets: np.ndarray      # int32 or int64, len(examples) + 1
    num_trained: np.ndarray  # int32 per example: tokens with a label

    @classmethod
    def from_table(cls, table) -> TokenizedExamples:
        """The `input_ids`, `labels` and `num_trained` columns of a tokenized table.

        A single-chunk table (what a worker receives) is viewed in place; the chunks of a table
        read from several cache shards are concatenated once, with 64-bit offsets.
        """
        ids, labels, trained = (table.column(name) for name in ("input_ids", "labels", "num_trained"))
        if ids.num_chunks == 1:
            values, offsets = _flat_values(ids.chunk(0))
            label_values, label_offsets = _flat_values(labels.chunk(0))
            num_trained = trained.chunk(0).to_numpy(zero_copy_only=True)
        else:
            parts = [_flat_values(chunk) for chunk in ids.chunks]
            values = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
            offsets = _concat_offsets([p[1] for p in parts])
            label_parts = [_flat_values(chunk) for chunk in labels.chunks]
            label_values = np.concatenate([p[0] for p in label_parts]) if label_parts else np.zeros(0, np.int32)
            label_offsets = _concat_offsets([p[1] for p in label_parts])
            num_trained = trained.to_numpy()
        if not np.array_equal(offsets, label_offsets):
            raise ValueError("input_ids and labels differ in length for some example")
        return cls(values, label_values, offsets, num_trained)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Views of one example's token ids and labels."""
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.input_ids[start:end], self.labels[start:end]


def _flat_values(chunk) -> tuple[np.ndarray, np.ndarray]:
    """Values and offsets of a list<int32> array, as views (offsets rebased to 0 only if sliced)."""
    offsets = chunk.offsets.to_numpy(zero_copy_only=True)
    values = chunk.values.to_numpy(zero_copy_only=True)
    if len(offsets) and offsets[0]:
        values, offsets = values[offsets[0]:offsets[-1]], offsets - offsets[0]
    return values, offsets


def _concat_offsets(parts: list[np.ndarray]) -> np.ndarray:
    out = np.zeros(1 + sum(len(p) - 1 for p in parts), dtype=np.int64)
    position, base = 1, 0
    for offsets in parts:
        out[position:position + len(offsets) - 1] = offsets[1:].astype(np.int64) + base
        position += len(offsets) - 1
        base += int(offsets[-1])
    return out


# ---------------------------------------------------------------------------------- rows


@dataclass(frozen=True, eq=False)
class Rows:
    """Sequences of examples as flat arrays: row `r` holds the examples
    `examples[offsets[r]:offsets[r + 1]]`, in order; a row without examples is a filler row."""

    examples: np.ndarray  # int64 example indices, row after row
    offsets: np.ndarray   # int64, len(rows) + 1

    @classmethod
    def singles(cls, examples: np.ndarray) -> Rows:
        """One row per example, in the given order."""
        return cls(examples.astype(np.int64), np.arange(len(examples) + 1, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, r: int) -> PackedRow:
        return self.examples[self.offsets[r]:self.offsets[r + 1]].tolist()

    def __iter__(self) -> Iterator[PackedRow]:
        return (self[r] for r in range(len(self)))

    def __eq__(self, other) -> bool:
        return (isinstance(other, Rows) and np.array_equal(self.offsets, other.offsets)
                and np.array_equal(self.examples, other.examples))

    def tokens(self, lengths: np.ndarray) -> np.ndarray:
        """Tokens per row, given the example lengths."""
        before = np.zeros(len(self.examples) + 1, dtype=np.int64)
        np.cumsum(lengths[self.examples], out=before[1:])
        return before[self.offsets[1:]] - before[self.offsets[:-1]]

    def take(self, index: np.ndarray) -> Rows:
        """The rows `index` (an array of row numbers), in that order."""
        counts = np.diff(self.offsets)[index]
        offsets = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        gather = np.repeat(self.offsets[:-1][index] - offsets[:-1], counts) + np.arange(offsets[-1])
        return Rows(self.examples[gather], offsets)

    def with_fillers(self, count: int) -> Rows:
        """These rows followed by `count` empty ones."""
        return Rows(self.examples, np.concatenate([self.offsets, np.full(count, self.offsets[-1])]))


def pack_examples(lengths: Sequence[int] | np.ndarray, max_length: int, order: Sequence[int] | None = None) -> Rows:
    """Best-fit-decreasing packing of examples into rows of at most `max_length` tokens.

    Each example, longest first, goes into the row with the least free space that still fits it
    (the oldest such row on a tie), or starts a new row. `order` breaks ties between equal
    lengths (pass a shuffled order for per-epoch variety). It changes which example goes where,
    never how many rows there are: that depends on the sorted lengths alone.

    Runs of equal length are placed together: best fit sends a run into the fitting rows from
    the fullest up, each taking as many as fit, then into new rows. So the work grows with the
    number of distinct lengths and rows touched, not with Python steps per example.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    order = np.arange(n) if order is None else np.asarray(order, dtype=np.int64)
    by_length = order[_stable_argsort(-lengths[order])]  # stable: ties keep `order`
    sorted_lengths = lengths[by_length]
    if n and sorted_lengths[0] > max_length:
        raise ValueError(f"example {by_length[0]} has {sorted_lengths[0]} tokens, more than max_length {max_length}")
    if n and sorted_lengths[-1] < 1:
        raise ValueError(f"example {by_length[-1]} has no tokens")
    row_of = np.empty(n, dtype=np.int64)  # the row of each example, in `by_length` order
    free = np.empty(n, dtype=np.int64)    # free tokens of each row opened so far
    rows = 0
    run_starts = np.flatnonzero(np.diff(sorted_lengths, prepend=-1))
    for start, end in zip(run_starts.tolist(), np.append(run_starts[1:], n).tolist()):
        need, count = int(sorted_lengths[start]), end - start
        placed = 0
        fitting = np.flatnonzero(free[:rows] >= need)  # row numbers, ascending
        if len(fitting):
            space = free[fitting]
            # Only the fullest rows that take the run are needed: find the free-space cut-off
            # by counting, then sort just those rows by (free space, row number).
            fits_per_space = np.bincount(space, minlength=max_length + 1) * (np.arange(max_length + 1) // need)
            cumulative = np.cumsum(fits_per_space)
            cutoff = int(np.searchsorted(cumulative, count))  # free space of the last row used
            if cutoff <= max_length:
                below = fitting[space < cutoff]
                at = fitting[space == cutoff]
                still = count - (int(cumulative[cutoff - 1]) if cutoff else 0)
                chosen = np.concatenate([below, at[:-(-still // (cutoff // need))]])
            else:
                chosen = fitting
            chosen = chosen[np.argsort(free[chosen], kind="stable")]
            take = free[chosen] // need
            overflow = int(take.sum()) - count
            if overflow > 0:
                take[-1] -= overflow
            placed = int(take.sum())
            row_of[start:start + placed] = np.repeat(chosen, take)
            free[chosen] -= take * need
        rest = count - placed
        if rest:
            per_row = max_length // need
            new_rows = -(-rest // per_row)
            take = np.full(new_rows, per_row, dtype=np.int64)
            take[-1] = rest - per_row * (new_rows - 1)
            ids = np.arange(rows, rows + new_rows)
            row_of[start + placed:end] = np.repeat(ids, take)
            free[rows:rows + new_rows] = max_length - take * need
            rows += new_rows
    # Within a row, examples keep the order they were placed in.
    by_row = np.argsort(row_of, kind="stable")
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_of, minlength=rows), out=offsets[1:])
    return Rows(by_length[by_row], offsets)


def _stable_argsort(keys: np.ndarray) -> np.ndarray:
    """A stable argsort; keys that fit 16 bits take numpy's radix sort (linear time)."""
    low = int(keys.min(initial=0))
    if int(keys.max(initial=0)) - low < 1 << 16:
        keys = (keys - low).astype(np.uint16)
    return np.argsort(keys, kind="stable")


# ------------------------------------------------------------------------------ the plan


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """One epoch's global batches, in training order: batch `step` is rows
    `step * global_batch_size ...` of `rows`. Indexing gives a batch as lists of example indices."""

    epoch: int
    rows: Rows
    global_batch_size: int

    def __len__(self) -> int:
        return len(self.rows) // self.global_batch_size

    def __getitem__(self, step: int) -> GlobalBatch:
        if not 0 <= step < len(self):
            raise IndexError(step)
        first = step * self.global_batch_size
        return [self.rows[r] for r in range(first, first + self.global_batch_size)]

    def __iter__(self) -> Iterator[GlobalBatch]:
        return (self[step] for step in range(len(self)))

    def __eq__(self, other) -> bool:
        return (isinstance(other, EpochPlan) and self.global_batch_size == other.global_batch_size
                and self.rows == other.rows)


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


def plan_epoch(lengths: Sequence[int] | np.ndarray, *, epoch: int, seed: int, max_length: int, packing: bool,
               global_batch_size: int) -> EpochPlan:
    """The epoch's global batches of rows, the same on every worker.

    Every epoch of the same data has the same number of batches (packing's row count does not
    depend on the shuffle), so one plan tells how many steps the whole run has.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    rng = epoch_rng(seed, epoch)
    order = rng.permutation(len(lengths))
    if packing:
        rows = pack_examples(lengths, max_length, order)
        rows = rows.take(rng.permutation(len(rows)))
    else:
        rows = Rows.singles(order)
    # Longest first inside each window of global batches (a stable sort: ties keep the shuffle).
    window = global_batch_size * LENGTH_GROUPING_WINDOW
    row_tokens = rows.tokens(lengths)
    key = (np.arange(len(rows)) // window) * (int(row_tokens.max(initial=0)) + 1) - row_tokens
    rows = rows.take(_stable_argsort(key))
    batches = -(-len(rows) // global_batch_size)
    rows = rows.with_fillers(batches * global_batch_size - len(rows))
    # Shuffle the batches so long and short ones alternate through the epoch.
    order = rng.permutation(batches)
    rows = rows.take((order[:, None] * global_batch_size + np.arange(global_batch_size)).ravel())
    return EpochPlan(epoch, rows, global_batch_size)


def worker_micro_batches(batch: GlobalBatch, *, rank: int, world_size: int, micro_batch_size: int) -> list[list[PackedRow]]:
    """The micro-batches (in order) that worker `rank` trains on for one global batch."""
    per_worker = len(batch) // world_size
    mine = batch[rank * per_worker:(rank + 1) * per_worker]
    return [mine[i:i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]


def trained_tokens(examples: TokenizedExamples, batch: GlobalBatch) -> int:
    """Trained (unmasked) tokens in a global batch: the loss is normalised by this count."""
    index = np.fromiter(chain.from_iterable(batch), dtype=np.int64)
    return int(examples.num_trained[index].sum())


# ------------------------------------------------------------------------------- collate


def collate(examples: TokenizedExamples, rows: Sequence[Sequence[int]], *, pad_id: int,
            block_mask: bool) -> dict[str, torch.Tensor]:
    """Tensors for one micro-batch, gathered from the flat arrays.

    Each example gets its own segment id (0 = padding) and positions restarting at 0.
    With `block_mask` (sdpa/eager attention) the rows are padded to the longest and carry a 4D
    boolean mask that lets a token see only earlier tokens of its own example.
    Without it (flash-attention 2) the micro-batch is flattened into a single row without padding
    (transformers' padding-free layout): transformers' flash-attention path finds the examples
    from restarting position_ids only when the batch has one row; with several rows and no mask
    it would let packed examples attend to each other.
    """
    per_row = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    index = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(per_row.sum()))
    starts = examples.offsets[index].astype(np.int64)
    lengths = examples.offsets[index + 1] - starts
    row_of = np.repeat(np.arange(len(rows)), per_row)   # per example
    first = np.cumsum(per_row) - per_row                # each row's first example
    segment = np.arange(len(index)) - first[row_of]     # 0-based segment within its row
    before = np.cumsum(lengths) - lengths               # tokens before each example, overall
    column_start = before - before[first[row_of]]     # ... within its row
    row_tokens = np.bincount(row_of, weights=lengths, minlength=len(rows)).astype(np.int64)
    width = max(int(row_tokens.max(initial=0)), 1)

    total = int(lengths.sum())
    position = np.arange(total) - np.repeat(before, lengths)  # position inside its example
    source = np.repeat(starts, lengths) + position
    token_row = np.repeat(row_of, lengths)
    token_column = np.repeat(column_start, lengths) + position

    size = (len(rows), width)
    input_ids = np.full(size, pad_id, dtype=np.int64)
    labels = np.full(size, -100, dtype=np.int64)
    # Padding continues the positions from 0, as a sequence of its own.
    position_ids = np.maximum(np.arange(width)[None, :] - row_tokens[:, None], 0)
    segment_ids = np.zeros(size, dtype=np.int64)
    input_ids[token_row, token_column] = examples.input_ids[source]
    labels[token_row, token_column] = examples.labels[source]
    position_ids[token_row, token_column] = position
    segment_ids[token_row, token_column] = np.repeat(segment + 1, lengths)
    batch = {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels),
             "position_ids": torch.from_numpy(position_ids), "segment_ids": torch.from_numpy(segment_ids)}
    if not block_mask:
        return _flattened(batch)
    segments = batch["segment_ids"]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = segments[:, :, None] == segments[:, None, :]
    # Padding attends to itself only, so no query row is fully masked (that gives NaNs).
    eye = torch.eye(width, dtype=torch.bool)
    real = (segments > 0)[:, :, None]
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
