"""Seeded synthetic datasets, in the hub datasets' schemas (`data.train: sample:<task>`).

Written from templates by llmft (no row comes from the real datasets), so the tiny-cpu configs
and the tests run offline. A task with sample data names its generator module in `Task.samples`
(`viggo`, `sql` and `gsm8k` here); the module defines `make_row(rng) -> dict` and `KEY_FIELDS`,
the fields that form the model's input. Each task has train (3000 rows), valid (200) and test
(200) splits, all drawn from one seeded stream and de-duplicated on the key fields across splits,
so no valid or test input also appears in train. The sentences are templated but varied (several
phrasings per slot, shuffled clause order, invented names), so a small model can learn the
mapping within minutes on a CPU and visibly improve.

Bump `SAMPLES_VERSION` whenever the generated rows change (it is part of the cache key).
"""

from __future__ import annotations

import functools
import importlib
import random

SAMPLES_VERSION = 1
SPLIT_SIZES = {"train": 3000, "valid": 200, "test": 200}


def sample_tasks() -> tuple[str, ...]:
    """The tasks that have sample data."""
    from llmft.tasks import TASKS

    return tuple(name for name, task in TASKS.items() if task.samples)


def generate_rows(task: str, split: str, seed: int = 0) -> list[dict]:
    """The `split` (train | valid | test) of llmft's synthetic `task` dataset; deterministic."""
    if task not in sample_tasks():
        raise ValueError(f"no sample data for task {task!r}; there is sample data for {', '.join(sample_tasks())}")
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLIT_SIZES)}")
    rows = _all_splits(task, seed)[split]
    # Fresh copies: callers may mutate rows.
    return [{k: (list(v) if isinstance(v, list) else v) for k, v in row.items()} for row in rows]


@functools.lru_cache(maxsize=8)
def _all_splits(task: str, seed: int) -> dict[str, list[dict]]:
    from llmft.tasks import get_task

    generator = importlib.import_module(get_task(task).samples)
    rng = random.Random(f"llmft-samples/{task}/{seed}")
    seen: set[str] = set()
    out: dict[str, list[dict]] = {}
    for split, size in SPLIT_SIZES.items():
        rows: list[dict] = []
        attempts = 0
        while len(rows) < size:
            attempts += 1
            if attempts > 50 * size:
                raise RuntimeError(f"sample generator for {task} keeps repeating itself")
            row = generator.make_row(rng)
            key = "\n".join(row[f] for f in generator.KEY_FIELDS)  # the model's input
            if key in seen:
                continue
            seen.add(key)
            rows.append(row)
        out[split] = rows
    id_field = getattr(generator, "ROW_ID_FIELD", None)
    if id_field:
        for split, rows in out.items():
            for i, row in enumerate(rows):
                row[id_field] = f"{task}-{split}-{i}"
    return out


# Text helpers shared by the generators.


def pick(rng: random.Random, options: list[str] | tuple[str, ...]) -> str:
    return options[rng.randrange(len(options))]


def with_article(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def english_list(items: list[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]
