"""Where rows come from: a local file, llmft's synthetic samples, or a Hugging Face hub dataset.

A source string (`data.train`, `data.valid`, `data.test`) is one of:

- a local file: `.jsonl` (one JSON object per line), `.json` (a JSON array of objects, or JSON
  lines), `.parquet` or `.csv`; relative paths are relative to the current directory;
- `sample:<task>[@<split>]`: llmft's seeded synthetic data (`llmft.data.samples`); without `@split`
  the split being loaded is used;
- a hub dataset `owner/name[:config][@split]`, loaded with `datasets.load_dataset`. The split is
  train | valid | test, mapped through the task's `HubSource` when the id is the task's own
  dataset (`valid` -> `validation`, ...); any other split name is passed to the hub unchanged.

Derived splits: when the task's dataset lacks a split (sql-create-context has only `train`,
gsm8k has no validation), llmft shuffles the hub's `train` split with `data.split_seed`
(numpy's default_rng) and cuts it: each derived split other than train takes 5% of the rows
(valid first, then test) and train keeps the rest. So sql-create-context becomes 90/5/5 and
gsm8k's train 95/5 train/valid, with gsm8k's own test split kept.

Every row is checked with the task's formatter; a malformed row is reported with its file and
line (invalid JSON, a missing or mistyped field, an empty completion).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmft.errors import LlmftError
from llmft.tasks import Example, Task, get_task

SPLITS = ("train", "valid", "test")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
DERIVED_FRACTION = 0.05
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?(@[\w.-]+)?$")


@dataclass
class SourceRows:
    """SourceRows read from one source, with where each came from, and the malformed ones."""

    source: str
    rows: list[dict] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # "data.jsonl line 7", parallel to rows
    problems: list[str] = field(default_factory=list)  # one sentence per malformed row


# ------------------------------------------------------------------------------ public API


def source_of(cfg, split: str) -> str | None:
    """The configured source string of `split`, or None when it is not set."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return getattr(cfg.data, split)


def read_rows(cfg, split: str) -> SourceRows:
    """All rows of `split`, each checked with the task's formatter; problems are collected, not raised."""
    task = get_task(cfg.data.task)
    raw = read_unchecked(cfg, split)
    checked = SourceRows(source=raw.source)
    for row, where in zip(raw.rows, raw.where):
        problem = row_problem(task, row)
        if problem:
            raw.problems.append(f"{where}: {problem}")
        else:
            checked.rows.append(row)
            checked.where.append(where)
    checked.problems = raw.problems
    return checked


def read_unchecked(cfg, split: str) -> SourceRows:
    """All rows of `split` as read, not yet checked; problems are those of reading (invalid JSON)."""
    source = _require_source(cfg, split)
    return _read_raw(cfg, source, split, get_task(cfg.data.task))


def local_jsonl(cfg, split: str) -> Path | None:
    """The split's file when it is a local JSON-lines file, which processes can read in ranges."""
    source = _require_source(cfg, split)
    path = _local_path(source)
    if path is None or path.suffix.lower() != ".jsonl":
        return None
    _check_file(path, source, split)
    return path


def load_rows(cfg, split: str) -> list[dict]:
    """The rows of `split` (train | valid | test); LlmftError naming file and line if any is malformed."""
    result = read_rows(cfg, split)
    if result.problems:
        raise LlmftError(malformed_message(f"data.{split}", result.problems))
    return result.rows


def count_rows(cfg, split: str) -> int:
    """How many rows `split` has (0 when it is not configured); rows are not checked."""
    source = source_of(cfg, split)
    if source is None:
        return 0
    path = _local_path(source)
    if path is not None and path.suffix == ".jsonl":
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    return len(_read_raw(cfg, source, split, get_task(cfg.data.task)).rows)


def source_fingerprint(cfg, split: str) -> str:
    """A hash that changes whenever the rows of `split` may change (for cache keys)."""
    source = _require_source(cfg, split)
    path = _local_path(source)
    if path is not None:
        _check_file(path, source, split)
        return "file:" + _file_sha256(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns)
    sample = _parse_sample(source, split)
    if sample is not None:
        from llmft.data.samples import SAMPLES_VERSION

        return f"sample:{sample[0]}@{sample[1]}:v{SAMPLES_VERSION}"
    hub = _parse_hub(source, split, get_task(cfg.data.task))
    dataset = _load_hub_split(hub.path, hub.config, hub.hub_split, source)
    # The datasets fingerprint follows the hub revision and the files it downloaded.
    return (f"hub:{hub.path}:{hub.config}:{hub.hub_split}:{hub.derive}:{cfg.data.split_seed}:"
            f"{getattr(dataset, '_fingerprint', '')}")


def row_problem(task: Task, row: Any) -> str | None:
    """Why `row` cannot be formatted by `task`, or None when it is fine."""
    return format_row(task, row)[1]


def format_row(task: Task, row: Any) -> tuple[Example | None, str | None]:
    """`task.format(row)`, or None and why the row cannot be formatted."""
    if not isinstance(row, dict):
        return None, f"expected a JSON object with fields {', '.join(task.required_fields)}, got {type(row).__name__}"
    try:
        return task.format(row), None
    except (ValueError, KeyError, TypeError) as exc:
        return None, str(exc)


def malformed_message(name: str, problems: list[str], shown: int = 5) -> str:
    listed = "; ".join(problems[:shown])
    more = f" (and {len(problems) - shown} more)" if len(problems) > shown else ""
    return (f"{name}: {len(problems)} malformed row(s): {listed}{more}. Fix or remove these rows "
            "(`llmft prepare CONFIG` lists them all).")


# --------------------------------------------------------------------------- source kinds


def _require_source(cfg, split: str) -> str:
    source = source_of(cfg, split)
    if source is None:
        raise LlmftError(f"data.{split} is not set in the config; give a file, `sample:<task>` "
                         "or a hub dataset id for it.")
    return source


def _local_path(source: str) -> Path | None:
    if source.startswith("sample:"):
        return None
    path = Path(source).expanduser()
    if path.suffix.lower() in FILE_SUFFIXES or path.exists():
        return path
    return None


def _check_file(path: Path, source: str, split: str) -> None:
    if not path.is_file():
        raise LlmftError(f"data.{split}: file {source} does not exist (relative paths are read from "
                         f"the current directory, {Path.cwd()}).")
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise LlmftError(f"data.{split}: {source} is not a .jsonl, .json, .parquet or .csv file.")


def _read_raw(cfg, source: str, split: str, task: Task) -> SourceRows:
    path = _local_path(source)
    if path is not None:
        _check_file(path, source, split)
        return _read_file(path, source)
    sample = _parse_sample(source, split)
    if sample is not None:
        from llmft.data.samples import generate_rows

        try:
            rows = generate_rows(sample[0], sample[1])
        except ValueError as exc:
            raise LlmftError(f"data.{split} = {source}: {exc}.") from None
        return SourceRows(source, rows, [f"{source} row {i + 1}" for i in range(len(rows))])
    if not _HUB_ID.match(source):
        raise LlmftError(f"data.{split} = {source!r} is neither an existing file (.jsonl, .json, "
                         ".parquet, .csv), `sample:<task>[@split]`, nor a hub id `owner/name[:config][@split]`.")
    hub = _parse_hub(source, split, task)
    dataset = _load_hub_split(hub.path, hub.config, hub.hub_split, source)
    rows = dataset.to_list()
    if hub.derive:
        rows = _derived_split(rows, split, hub.derived_splits, cfg.data.split_seed)
    return SourceRows(source, rows, [f"{source} row {i + 1}" for i in range(len(rows))])


def _read_file(path: Path, source: str) -> SourceRows:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        return SourceRows(source, rows, [f"{source} row {i + 1}" for i in range(len(rows))])
    if suffix == ".csv":
        result = SourceRows(source)
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for row in reader:
                result.rows.append(row)
                result.where.append(f"{source} line {reader.line_num}")
        return result
    if suffix == ".json":
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as exc:
                raise LlmftError(f"{source} line {exc.lineno}: invalid JSON ({exc.msg}). Fix the file; "
                                 "a .json file holds one JSON array of objects (or JSON lines).") from None
            return SourceRows(source, rows, [f"{source} item {i + 1}" for i in range(len(rows))])
    return read_range(RowRange(str(path), source, 0, path.stat().st_size, 1))


# --------------------------------------------------------------------------- JSON lines


@dataclass(frozen=True)
class RowRange:
    """Part of a JSON-lines file that a process reads on its own: the lines between two byte
    offsets (each at a line start), the first of them being line `first_line` of the file."""

    path: str
    source: str
    start: int
    end: int
    first_line: int


def jsonl_ranges(path: Path, source: str, count: int) -> list[RowRange]:
    """`path` cut into about `count` ranges of whole lines, numbered as in the file."""
    size = path.stat().st_size
    bounds = [0]
    with path.open("rb") as f:
        for k in range(1, count):
            f.seek(max(size * k // count - 1, bounds[-1]))
            f.readline()  # to the start of the next line
            if bounds[-1] < f.tell() < size:
                bounds.append(f.tell())
        bounds.append(size)
        ranges, line = [], 1
        for start, end in zip(bounds, bounds[1:]):
            ranges.append(RowRange(str(path), source, start, end, line))
            f.seek(start)
            left = end - start
            while left:  # count the range's lines, a block at a time
                block = f.read(min(left, 1 << 24))
                line += block.count(b"\n")
                left -= len(block)
    return ranges


def read_range(part: RowRange) -> SourceRows:
    """The rows of one range of a JSON-lines file; blank lines are skipped, bad JSON is a problem."""
    with open(part.path, "rb") as f:
        f.seek(part.start)
        data = f.read(part.end - part.start)
    result = SourceRows(part.source)
    for number, line in enumerate(data.split(b"\n"), start=part.first_line):
        if not line.strip():
            continue
        try:
            row = _loads(line)
        except ValueError:
            where = f"{part.source} line {number}"
            try:
                row = json.loads(line)  # the standard parser's message, and what it accepts (NaN)
            except UnicodeDecodeError as exc:
                result.problems.append(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start + 1})")
                continue
            except json.JSONDecodeError as exc:
                result.problems.append(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})")
                continue
        result.rows.append(row)
        result.where.append(f"{part.source} line {number}")
    return result


try:  # orjson parses JSON lines about ten times faster than the standard library
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is a dependency; this keeps a bare install working
    _loads = json.loads


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parse_sample(source: str, split: str) -> tuple[str, str] | None:
    if not source.startswith("sample:"):
        return None
    name, _, sample_split = source.removeprefix("sample:").partition("@")
    return name, sample_split or split


@dataclass(frozen=True)
class _HubRef:
    path: str
    config: str | None
    hub_split: str
    derive: bool
    derived_splits: tuple[str, ...]


def _parse_hub(source: str, split: str, task: Task) -> _HubRef:
    rest, _, wanted = source.partition("@")
    path, _, config = rest.partition(":")
    wanted = wanted or split
    hub = task.hub
    own = hub is not None and path.lower() in (hub.path.lower(), hub.path.split("/")[-1].lower())
    if own:
        path = hub.path
        config = config or hub.config
    if wanted not in SPLITS:  # a raw hub split name
        return _HubRef(path, config or None, wanted, False, ())
    mapping = hub.splits if own else {"train": "train", "valid": "validation", "test": "test"}
    hub_split = mapping.get(wanted)
    if hub_split is not None:
        return _HubRef(path, config or None, hub_split, False, ())
    derived = tuple(s for s in SPLITS if mapping.get(s) is None)
    return _HubRef(path, config or None, "train", True, derived)


def _derived_split(rows: list[dict], split: str, derived: tuple[str, ...], seed: int) -> list[dict]:
    """`split`'s share of the hub's train rows (see the module docstring)."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(rows))
    held_out = [s for s in derived if s != "train"]
    size = int(round(DERIVED_FRACTION * len(rows)))
    start = 0
    for name in held_out:
        if name == split:
            return [rows[i] for i in order[start:start + size]]
        start += size
    return [rows[i] for i in order[start:]]  # train keeps the rest


_hub_cache: dict[tuple, Any] = {}


def _load_hub_split(path: str, config: str | None, hub_split: str, source: str):
    key = (path, config, hub_split)
    if key in _hub_cache:
        return _hub_cache[key]
    import datasets

    reachable = _hub_reachable()
    try:
        if reachable:
            dataset = datasets.load_dataset(path, config, split=hub_split)
        else:
            with _offline():  # only the local datasets cache can serve it; fail fast otherwise
                dataset = datasets.load_dataset(path, config, split=hub_split)
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot get it from the hub"
        what = f"hub dataset {path}" + (f" (config {config})" if config else "") + f", split {hub_split}"
        if reachable:
            reason = (f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. Check the "
                      "dataset id, config and split name.")
        else:
            reason = ("the Hugging Face hub is unreachable from this machine and the dataset is not "
                      "in the local datasets cache.")
        raise LlmftError(
            f"{source}: could not load {what}: {reason} Give a local file instead (e.g. "
            "data.train=path/to/train.jsonl, with the same fields) or `sample:<task>`."
        ) from None
    _hub_cache[key] = dataset
    return dataset


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub answers at all. Without this check, datasets retries for ~25 s."""
    import socket
    from urllib.parse import urlparse

    import huggingface_hub.constants as hub_constants

    if hub_constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(hub_constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline():
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved
