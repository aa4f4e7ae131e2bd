"""From rows to token ids and labels, cached as Parquet.

`tokenize_split(cfg, tokenizer, split)` formats every row with the task, tokenizes the whole
text once with the fast tokenizer (batched, with character offsets) and labels each token from
the segments: a token is trained when any of its characters lies in a trained segment, so the
mask does not depend on how prompt and completion would tokenize separately. Labels are -100 on
untrained tokens (unless `data.train_on_prompt`) and always on the first token, which no token
predicts. BOS is prepended when the tokenizer adds one by default (and the text does not already
start with it, as some chat templates render it); when the task has no stop token of its own the
tokenizer's EOS is appended and trained (a task's own stop token is part of its completion text).

The result is cached under `<data.cache_dir>/tokenized/<key>.parquet`, written atomically. The
key hashes everything the result depends on: the data (`source_fingerprint`), the tokenizer's
files (vocabulary, merges, added and special tokens, chat template, BOS behaviour), the task and
its `format_version`, `TOKENIZE_VERSION`, max_length, over_length and train_on_prompt. So
editing the data, adding a token or changing the formatting code rebuilds it; nothing else does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llmft.data.sources import read_rows, malformed_message, source_fingerprint, source_of
from llmft.errors import LlmftError
from llmft.files import write_atomic
from llmft.tasks import Example, Task, get_task

# Bump when this module's output changes for the same inputs.
TOKENIZE_VERSION = 1
IGNORE_INDEX = -100
_METADATA_KEY = b"llmft"

SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("num_trained", pa.int32()),
    ("length", pa.int32()),
    ("prompt_length", pa.int32()),  # tokens up to the end of Example.prompt (BOS included)
    ("prompt", pa.string()),
    ("reference", pa.string()),
    ("row_index", pa.int64()),  # position in the split's rows as `load_rows` returns them
])


# ------------------------------------------------------------------------------ public API


def tokenize_split(cfg, tokenizer, split: str) -> pa.Table:
    """The tokenized `split` (train | valid | test), from the cache when it is current."""
    path = cache_path(cfg, tokenizer, split)
    if path.is_file():
        return pq.read_table(path)
    task = get_task(cfg.data.task)
    rows = read_rows(cfg, split)
    if rows.problems:
        raise LlmftError(malformed_message(f"data.{split}", rows.problems))
    formatter = formatter_for(task, tokenizer)
    examples = []
    for row, where in zip(rows.rows, rows.where):
        try:
            examples.append(formatter(row))
        except Exception as exc:  # noqa: BLE001 - a chat template may raise anything
            raise LlmftError(f"data.{split}: {where}: cannot be formatted as a {task.name} example: "
                             f"{exc}") from None
    encoded = encode_examples(examples, tokenizer, task=task, train_on_prompt=cfg.data.train_on_prompt)
    table, stats = apply_length_policy(encoded, cfg.data.max_length, cfg.data.over_length,
                                       split=split, source=rows.source, where=rows.where)
    stats.update(split=split, source=rows.source, max_length=cfg.data.max_length,
                 over_length_policy=cfg.data.over_length)
    table = table.replace_schema_metadata({_METADATA_KEY: json.dumps(stats).encode()})
    write_atomic(path, lambda tmp: pq.write_table(table, tmp))
    return table


def table_stats(table: pa.Table) -> dict:
    """What `tokenize_split` recorded about the rows it dropped or truncated."""
    meta = table.schema.metadata or {}
    return json.loads(meta.get(_METADATA_KEY, b"{}"))


def cache_path(cfg, tokenizer, split: str) -> Path:
    """Where the tokenized `split` is (or would be) cached."""
    task = get_task(cfg.data.task)
    parts = {
        "split": split,
        "source": source_of(cfg, split),
        "data": source_fingerprint(cfg, split),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "task": task.name,
        "format_version": task.format_version,
        "tokenize_version": TOKENIZE_VERSION,
        "max_length": cfg.data.max_length,
        "over_length": cfg.data.over_length,
        "train_on_prompt": cfg.data.train_on_prompt,
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
    return Path(cfg.data.cache_dir).expanduser() / "tokenized" / f"{key}.parquet"


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything in the tokenizer that changes token ids."""
    _require_fast(tokenizer)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    # Padding/truncation are call-time settings transformers toggles; they do not change ids.
    spec.pop("padding", None)
    spec.pop("truncation", None)
    extra = {
        "class": type(tokenizer).__name__,
        "bos": tokenizer.bos_token, "eos": tokenizer.eos_token,
        "special": sorted(map(str, tokenizer.all_special_tokens)),
        "adds_bos": adds_bos(tokenizer),
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    blob = json.dumps([spec, extra], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def formatter_for(task: Task, tokenizer) -> Callable[[dict], Example]:
    """The task's formatter; for chat on a tokenizer with a chat template, over that template."""
    if task.format_with_template is not None and getattr(tokenizer, "chat_template", None):
        def render(messages: list[dict], add_generation_prompt: bool) -> str:
            return tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt)

        return task.format_with_template(render)
    return task.format


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of a text by default (Llama does, GPT-2 does not)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def special_token_boundary_ok(tokenizer, token: str, word: str = "word") -> bool:
    """Whether `word` right after the special `token` tokenizes as bare `word` does.

    False for a Llama sentencepiece tokenizer loaded with `legacy=False` (Metaspace prepend
    "first"): text after a special token then loses its "▁" prefix and trains on unnatural
    pieces. Load Llama tokenizers with `legacy=True` (prepend "always").
    """
    backend = tokenizer.backend_tokenizer
    joined = backend.encode(token + word, add_special_tokens=False).ids
    bare = backend.encode(word, add_special_tokens=False).ids
    return joined[:1] == [tokenizer.convert_tokens_to_ids(token)] and joined[1:] == bare


@dataclass
class Encoded:
    """Examples as token ids and labels, before the length policy, in flat arrays:
    example i is `ids[offsets[i]:offsets[i + 1]]`."""

    ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    prompt_lengths: np.ndarray
    prompts: list[str]
    references: list[str]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1


def encode_examples(examples: list[Example], tokenizer, *, task: Task, train_on_prompt: bool) -> Encoded:
    """Token ids and labels for formatted examples (batched and vectorised; no length limit)."""
    _require_fast(tokenizer)
    texts = ["".join(s.text for s in ex.segments) for ex in examples]
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    n = len(examples)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=n)
    total = int(lengths.sum())
    ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int32, count=total)
    chars = np.fromiter(chain.from_iterable(chain.from_iterable(e.offsets for e in encodings)),
                        dtype=np.int64, count=2 * total).reshape(-1, 2)
    owner = np.repeat(np.arange(n), lengths)

    # Character spans of trained segments, padded to the same count per example.
    spans = [_trained_spans(ex, train_on_prompt) for ex in examples]
    width = max((len(s) for s in spans), default=0)
    span_array = np.zeros((n, max(width, 1), 2), dtype=np.int64)
    for i, example_spans in enumerate(spans):
        if example_spans:
            span_array[i, :len(example_spans)] = example_spans
    trained = np.zeros(total, dtype=bool)
    for k in range(width):
        # Any overlap: a token straddling a boundary is one the model must produce.
        trained |= (chars[:, 0] < span_array[owner, k, 1]) & (chars[:, 1] > span_array[owner, k, 0])
    prompt_chars = np.fromiter((len(ex.prompt) for ex in examples), dtype=np.int64, count=n)
    prompt_lengths = np.bincount(owner, weights=chars[:, 0] < prompt_chars[owner], minlength=n).astype(np.int64)

    starts = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    if adds_bos(tokenizer):
        needs = np.fromiter((not t.startswith(tokenizer.bos_token) for t in texts), dtype=bool, count=n)
        where = starts[needs]
        ids = np.insert(ids, where, tokenizer.bos_token_id)
        trained = np.insert(trained, where, False)
        lengths = lengths + needs
        prompt_lengths = prompt_lengths + needs
        starts = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    if task.stop_token is None:
        if tokenizer.eos_token_id is None:
            raise LlmftError(f"Task {task.name} ends completions with the tokenizer's EOS token, "
                             "but this tokenizer has none; use a tokenizer with an eos_token.")
        ends = starts + lengths
        ids = np.insert(ids, ends, tokenizer.eos_token_id)
        trained = np.insert(trained, ends, True)
        lengths = lengths + 1
        starts = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    labels = np.where(trained, ids, IGNORE_INDEX).astype(np.int32)
    labels[starts[lengths > 0]] = IGNORE_INDEX  # nothing predicts an example's first token
    return Encoded(ids=ids.astype(np.int32), labels=labels,
                   offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                   prompt_lengths=np.minimum(prompt_lengths, lengths),
                   prompts=[ex.prompt for ex in examples], references=[ex.reference for ex in examples])


def _trained_spans(example: Example, train_on_prompt: bool) -> list[tuple[int, int]]:
    spans, position = [], 0
    for segment in example.segments:
        end = position + len(segment.text)
        if segment.trained or train_on_prompt:
            spans.append((position, end))
        position = end
    return spans


def apply_length_policy(encoded: Encoded, max_length: int, policy: str, *, split: str, source: str,
                        where: list[str]) -> tuple[pa.Table, dict]:
    """Drop, truncate or refuse examples over `max_length`; also drop examples with nothing trained."""
    lengths = encoded.lengths
    over = np.flatnonzero(lengths > max_length)
    if len(over) and policy == "error":
        shown = ", ".join(f"{where[i]} ({lengths[i]} tokens)" for i in over[:5])
        raise LlmftError(
            f"data.{split} ({source}): {len(over)} of {len(encoded)} examples are longer than "
            f"data.max_length = {max_length} tokens: {shown}{' ...' if len(over) > 5 else ''}. Raise "
            "data.max_length, shorten those rows, or set data.over_length to drop or truncate.")
    new_lengths = np.minimum(lengths, max_length) if policy == "truncate" else lengths
    owner = np.repeat(np.arange(len(encoded)), lengths)
    position = np.arange(len(encoded.ids)) - encoded.offsets[:-1][owner]
    token_kept = position < new_lengths[owner]
    trained_counts = np.bincount(owner[token_kept], weights=(encoded.labels[token_kept] != IGNORE_INDEX),
                                 minlength=len(encoded)).astype(np.int64)
    example_kept = trained_counts > 0
    if policy != "truncate":
        example_kept &= lengths <= max_length
    untrained = int(np.count_nonzero((trained_counts == 0) & ((lengths <= max_length) | (policy == "truncate"))))
    token_kept &= example_kept[owner]
    keep = np.flatnonzero(example_kept)
    out_lengths = new_lengths[keep].astype(np.int32)
    out_offsets = np.concatenate([[0], np.cumsum(out_lengths)]).astype(np.int32)
    table = pa.Table.from_arrays([
        _list_array(out_offsets, encoded.ids[token_kept]),
        _list_array(out_offsets, encoded.labels[token_kept]),
        _numeric_array(trained_counts[keep].astype(np.int32)),
        _numeric_array(out_lengths),
        _numeric_array(np.minimum(encoded.prompt_lengths[keep], out_lengths).astype(np.int32)),
        _string_array([encoded.prompts[i] for i in keep]),
        _string_array([encoded.references[i] for i in keep]),
        _numeric_array(keep.astype(np.int64)),
    ], schema=SCHEMA)
    stats = {
        "rows_in": len(encoded),
        "rows_out": int(len(keep)),
        "over_length": int(len(over)),
        "over_length_rows": [where[i] for i in over[:20]],
        "longest": int(lengths.max(initial=0)),
        "truncated": int(len(over)) if policy == "truncate" else 0,
        "dropped_over_length": int(len(over)) if policy == "drop" else 0,
        "dropped_untrained": untrained,
    }
    return table, stats


# ------------------------------------------------------------------------------- helpers


# Arrays are built from buffers: pa.array() imports pandas, which costs more than tokenizing.
def _numeric_array(values: np.ndarray) -> pa.Array:
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _list_array(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    return pa.ListArray.from_arrays(_numeric_array(offsets.astype(np.int32)),
                                    _numeric_array(values.astype(np.int32)))


def _string_array(strings: list[str]) -> pa.Array:
    encoded = [s.encode() for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def _require_fast(tokenizer) -> None:
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise LlmftError(f"llmft needs a fast (HF `tokenizers`) tokenizer, got {type(tokenizer).__name__}; "
                         "load it with AutoTokenizer (use_fast=True) or give the model a tokenizer.json.")
