"""From rows to token ids and labels, cached as Parquet shards.

`tokenize_split(cfg, tokenizer, split)` formats every row with the task, tokenizes the whole
text once with the fast tokenizer (batched, with character offsets) and labels each token from
the segments: a token is trained when any of its characters lies in a trained segment, so the
mask does not depend on how prompt and completion would tokenize separately. Labels are -100 on
untrained tokens (unless `data.train_on_prompt`) and always on the first token, which no token
predicts. BOS is prepended when the tokenizer adds one by default (and the text does not already
start with it, as some chat templates render it); when the task has no stop token of its own the
tokenizer's EOS is appended and trained (a task's own stop token is part of its completion text).

A large split is cut into pieces (byte ranges of a JSON-lines file, which each process reads
itself, or slices of the rows) that a pool of processes tokenizes in parallel, one piece each at
a time: reading, formatting and labelling are Python, which one process cannot spread over
cores. A split under `SMALL_SPLIT_BYTES` is tokenized in the calling process, which saves
starting the pool. Either way each piece becomes one Parquet shard.

The result is cached as the folder `<data.cache_dir>/tokenized/<key>/` (`part-NNNNN.parquet`
shards and `stats.json`), written atomically; a cache hit reads the shards memory-mapped. The
key hashes everything the result depends on: the data (`source_fingerprint`), the tokenizer
(vocabulary, merges, added and special tokens, chat template, BOS behaviour), the task and its
`format_version`, `TOKENIZE_VERSION`, max_length, over_length and train_on_prompt. So editing
the data, adding a token or changing the formatting code rebuilds it; nothing else does.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from llmft.data.sources import (
    RowRange,
    SourceRows,
    format_row,
    jsonl_ranges,
    local_jsonl,
    malformed_message,
    read_range,
    read_unchecked,
    source_fingerprint,
    source_of,
)
from llmft.errors import LlmftError
from llmft.files import atomic_folder
from llmft.tasks import Example, Task, get_task

# Bump when this module's output changes for the same inputs.
TOKENIZE_VERSION = 2
IGNORE_INDEX = -100
_METADATA_KEY = b"llmft"
STATS_FILE = "stats.json"
# Below this a split is tokenized in the calling process; above, pieces of at most about
# PIECE_BYTES (at least two per process, as many for each, so that the processes finish together) go to a pool.
SMALL_SPLIT_BYTES = 1 << 20
PIECE_BYTES = 16 << 20
# The same for rows held in memory (hub datasets, samples, .parquet/.csv/.json files).
SMALL_SPLIT_ROWS = 4000
PIECE_ROWS = 50_000

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
    folder = cache_path(cfg, tokenizer, split)
    if folder.is_dir():
        return read_cached(folder)
    get_task(cfg.data.task)  # an unknown task fails before any work
    pieces, read_problems = _pieces(cfg, split)
    processes = min(cfg.data.tokenize_processes or _usable_cpus(), len(pieces))
    tokenize = functools.partial(_tokenize_piece, cfg=cfg, split=split)
    results = list(_map_pieces(tokenize, pieces, processes, tokenizer))
    _raise_for_problems(cfg, split, read_problems, results)
    tables, first_row = [], 0
    for result in results:  # row_index counts the split's rows, not the piece's
        tables.append(result.table.set_column(7, "row_index", pc.add(result.table.column("row_index"), first_row)))
        first_row += result.rows
    stats = _merged_stats(results)
    stats.update(split=split, source=source_of(cfg, split), max_length=cfg.data.max_length,
                 over_length_policy=cfg.data.over_length)
    with atomic_folder(folder) as tmp, ThreadPoolExecutor(max(1, processes)) as writer:
        # Parquet encoding releases the GIL, so shards are written on several threads.
        paths = [tmp / f"part-{index:05d}.parquet" for index in range(len(tables))]
        list(writer.map(pq.write_table, tables, paths))
        (tmp / STATS_FILE).write_text(json.dumps(stats))
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    return table.replace_schema_metadata({_METADATA_KEY: json.dumps(stats).encode()})


def read_cached(folder: Path) -> pa.Table:
    """A cached tokenized split: its shards, memory-mapped, with `stats.json` as table metadata."""
    shards = sorted(folder.glob("part-*.parquet"))
    # ParquetFile.read, unlike pq.read_table, does not import pyarrow.dataset and pandas (0.4 s).
    tables = [pq.ParquetFile(shard, memory_map=True).read() for shard in shards]
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    return table.replace_schema_metadata({_METADATA_KEY: (folder / STATS_FILE).read_bytes()})


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
    return Path(cfg.data.cache_dir).expanduser() / "tokenized" / key


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything in the tokenizer that changes token ids."""
    _require_fast(tokenizer)
    spec = tokenizer.backend_tokenizer.to_str()
    # Truncation and padding, call-time settings transformers toggles, come first in the JSON and
    # do not change ids; everything from the added tokens on does. (Hashing the text as it is
    # saves parsing and re-serialising a large vocabulary.)
    spec = spec[spec.find('"added_tokens":'):]
    extra = {
        "class": type(tokenizer).__name__,
        "bos": tokenizer.bos_token, "eos": tokenizer.eos_token,
        "special": sorted(map(str, tokenizer.all_special_tokens)),
        "adds_bos": adds_bos(tokenizer),
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    digest = hashlib.sha256(spec.encode())
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


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
    lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=n)
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


def apply_length_policy(encoded: Encoded, max_length: int, policy: str, *,
                        where: list[str]) -> tuple[pa.Table, dict]:
    """Drop or truncate examples over `max_length` (under "error", drop them: the caller refuses
    the split); also drop examples with nothing trained. The stats count what happened."""
    lengths = encoded.lengths
    over = np.flatnonzero(lengths > max_length)
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
        "over_length_shown": [f"{where[i]} ({lengths[i]} tokens)" for i in over[:5]],
        "longest": int(lengths.max(initial=0)),
        "truncated": int(len(over)) if policy == "truncate" else 0,
        "dropped_over_length": int(len(over)) if policy == "drop" else 0,
        "dropped_untrained": untrained,
    }
    return table, stats


# ------------------------------------------------------------------------ pieces in parallel


@dataclass
class PieceResult:
    """What tokenizing one piece of a split gave; `table` is None when the piece has bad rows."""

    rows: int                                      # rows read (row_index counts from them)
    table: pa.Table | None = None
    stats: dict = field(default_factory=dict)
    read_problems: list[str] = field(default_factory=list)    # e.g. invalid JSON
    format_problems: list[str] = field(default_factory=list)  # rows the task cannot format
    format_error: str | None = None                # the chat template failed on a row


def _pieces(cfg, split: str) -> tuple[list[RowRange | SourceRows], list[str]]:
    """The split cut into pieces, and problems found while reading it here."""
    path = local_jsonl(cfg, split)
    if path is not None:
        size = path.stat().st_size
        if size < SMALL_SPLIT_BYTES:
            return jsonl_ranges(path, source_of(cfg, split), 1), []
        return jsonl_ranges(path, source_of(cfg, split), _piece_count(cfg, size, PIECE_BYTES)), []
    rows = read_unchecked(cfg, split)
    n = len(rows.rows)
    count = 1 if n < SMALL_SPLIT_ROWS else _piece_count(cfg, n, PIECE_ROWS)
    bounds = [n * k // count for k in range(count + 1)]
    pieces = [SourceRows(rows.source, rows.rows[a:b], rows.where[a:b]) for a, b in zip(bounds, bounds[1:])]
    return pieces, rows.problems


def _piece_count(cfg, amount: int, per_piece: int) -> int:
    # Whole rounds of one piece per process: with one piece left over, the last round runs it on
    # one process while the others idle (at 200k examples, 5 pieces on 2 processes took 3 pieces' time).
    processes = cfg.data.tokenize_processes or _usable_cpus()
    return processes * max(2, -(-amount // (per_piece * processes)))


def _map_pieces(tokenize: Callable, pieces: list, processes: int, tokenizer) -> Iterable[PieceResult]:
    """`tokenize(piece, tokenizer)` for every piece, in order: in this process, or on a pool."""
    if processes <= 1:
        yield from (tokenize(piece, tokenizer=tokenizer) for piece in pieces)
        return
    # Forked workers inherit the tokenizer instead of unpickling it. They tokenize on one thread
    # each (setting the variable before the fork also keeps `tokenizers` from warning about it).
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with tokenizer_threads(False):
        pool = ProcessPoolExecutor(processes, mp_context=context, initializer=_start_worker, initargs=(tokenizer,))
        results = pool.map(tokenize, pieces)  # starts the workers
    with pool:
        yield from results


_worker_tokenizer = None


def _start_worker(tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


@contextlib.contextmanager
def tokenizer_threads(on: bool) -> Iterator[None]:
    """Switch the Rust tokenizer's own threads on or off for the block (it reads
    TOKENIZERS_PARALLELISM at each batch call, and a forked process inherits it)."""
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if on else "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def _tokenize_piece(piece: RowRange | SourceRows, *, cfg, split: str, tokenizer=None) -> PieceResult:
    """Read, format, tokenize and label one piece; rows with problems stop it before tokenizing."""
    tokenizer = tokenizer or _worker_tokenizer
    rows = read_range(piece) if isinstance(piece, RowRange) else piece
    task = get_task(cfg.data.task)
    formatter = formatter_for(task, tokenizer)
    result = PieceResult(rows=len(rows.rows), read_problems=rows.problems)
    examples = []
    for row, where in zip(rows.rows, rows.where):
        example, problem = format_row(task, row)
        if problem:
            result.format_problems.append(f"{where}: {problem}")
        elif result.format_problems or result.format_error:
            continue  # the split is refused anyway; keep checking rows only
        elif formatter is not task.format:
            try:
                examples.append(formatter(row))
            except Exception as exc:  # noqa: BLE001 - a chat template may raise anything
                result.format_error = f"{where}: cannot be formatted as a {task.name} example: {exc}"
        else:
            examples.append(example)
    if result.read_problems or result.format_problems or result.format_error:
        return result
    encoded = encode_examples(examples, tokenizer, task=task, train_on_prompt=cfg.data.train_on_prompt)
    result.table, result.stats = apply_length_policy(encoded, cfg.data.max_length, cfg.data.over_length,
                                                     where=rows.where)
    return result


def _raise_for_problems(cfg, split: str, read_problems: list[str], results: list[PieceResult]) -> None:
    """The split's first user error, in the order one pass over its rows would meet them."""
    problems = read_problems + [p for r in results for p in r.read_problems] + [p for r in results for p in r.format_problems]
    if problems:
        raise LlmftError(malformed_message(f"data.{split}", problems))
    for result in results:
        if result.format_error:
            raise LlmftError(f"data.{split}: {result.format_error}")
    over = sum(r.stats["over_length"] for r in results)
    if over and cfg.data.over_length == "error":
        shown = [s for r in results for s in r.stats["over_length_shown"]][:5]
        rows = sum(r.stats["rows_in"] for r in results)
        raise LlmftError(
            f"data.{split} ({source_of(cfg, split)}): {over} of {rows} examples are longer than "
            f"data.max_length = {cfg.data.max_length} tokens: {', '.join(shown)}{' ...' if over > 5 else ''}. Raise "
            "data.max_length, shorten those rows, or set data.over_length to drop or truncate.")


def _merged_stats(results: list[PieceResult]) -> dict:
    stats = [r.stats for r in results]
    total = {key: sum(s[key] for s in stats) for key in
             ("rows_in", "rows_out", "over_length", "truncated", "dropped_over_length", "dropped_untrained")}
    total["over_length_rows"] = [w for s in stats for w in s["over_length_rows"]][:20]
    total["longest"] = max((s["longest"] for s in stats), default=0)
    return total


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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
