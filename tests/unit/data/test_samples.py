"""The synthetic sample datasets: schema, sizes, determinism, speed and content checks."""

from __future__ import annotations

import re
import sqlite3

import pytest

from llmft.data import samples
from llmft.data.samples import SPLIT_SIZES, generate_rows
from llmft.data.samples.viggo import ATTRIBUTES, FUNCTIONS

TASK_FIELDS = {"viggo": {"gem_id", "meaning_representation", "target", "references"},
               "sql": {"question", "context", "answer"},
               "gsm8k": {"question", "answer"}}
MR = re.compile(r"^(\w+)\((.*)\)$")
SLOT = re.compile(r"(\w+)\[([^\]]*)\]")


def test_every_split_of_every_task_is_generated_afresh_the_same():
    first = {(task, split): generate_rows(task, split) for task in TASK_FIELDS for split in SPLIT_SIZES}
    samples._all_splits.cache_clear()
    again = {(task, split): generate_rows(task, split) for task in TASK_FIELDS for split in SPLIT_SIZES}
    assert first == again and all(len(rows) == SPLIT_SIZES[split] for (_, split), rows in again.items())


@pytest.mark.parametrize("task", sorted(TASK_FIELDS))
def test_schema_sizes_and_determinism(task):
    for split, size in SPLIT_SIZES.items():
        rows = generate_rows(task, split)
        assert len(rows) == size
        assert all(set(r) == TASK_FIELDS[task] for r in rows)
    assert SPLIT_SIZES == {"train": 3000, "valid": 200, "test": 200}
    samples._all_splits.cache_clear()
    assert generate_rows(task, "valid") == generate_rows(task, "valid")
    again = generate_rows(task, "train")
    samples._all_splits.cache_clear()
    assert generate_rows(task, "train") == again  # same rows from a fresh generator
    assert generate_rows(task, "train", seed=1) != again


@pytest.mark.parametrize("task, key", [("viggo", ("target",)), ("sql", ("question", "context")), ("gsm8k", ("question",))])
def test_no_input_is_repeated_within_or_across_splits(task, key):
    inputs = [tuple(r[k] for k in key) for split in SPLIT_SIZES for r in generate_rows(task, split)]
    assert len(inputs) == len(set(inputs))


def test_rows_are_copies():
    rows = generate_rows("viggo", "test")
    rows[0]["references"].append("changed")
    assert generate_rows("viggo", "test")[0]["references"] != rows[0]["references"]


def test_viggo_meaning_representations():
    rows = generate_rows("viggo", "train")
    functions = set()
    for row in rows:
        function, body = MR.match(row["meaning_representation"]).groups()
        functions.add(function)
        slots = SLOT.findall(body)
        names = [name for name, _ in slots]
        assert names == sorted(names, key=ATTRIBUTES.index), row  # canonical attribute order
        assert row["references"] == [row["target"]]
        assert row["gem_id"].startswith("viggo-train-")
        for name, value in slots:
            if function == "request_attribute":
                assert value == ""
            elif name in ("name", "developer", "release_year", "esrb", "player_perspective", "specifier", "rating"):
                assert value in row["target"], (name, value, row["target"])  # learnable from the sentence
            elif name in ("genres", "platforms"):
                assert all(v in row["target"] for v in value.split(", ")), row
    assert functions == set(FUNCTIONS)
    assert len(FUNCTIONS) == 9 and len(ATTRIBUTES) == 14


def test_sql_answers_run_on_their_schemas_in_sqlite():
    rows = generate_rows("sql", "train") + generate_rows("sql", "test")
    for row in rows:
        db = sqlite3.connect(":memory:")
        db.execute(row["context"])
        db.execute(row["answer"]).fetchall()  # raises on invalid SQL
        db.close()
    answers = " ".join(r["answer"] for r in rows)
    for construct in ("WHERE", "COUNT(*)", "MAX(", "MIN(", "ORDER BY", "LIMIT 1", " AND ", " > "):
        assert construct in answers
    assert all(r["context"].startswith("CREATE TABLE ") for r in rows)


def test_gsm8k_solutions_are_correct_and_end_with_the_answer():
    for row in generate_rows("gsm8k", "train"):
        lines = row["answer"].split("\n")
        final = re.fullmatch(r"#### (-?\d+)", lines[-1])
        assert final, row["answer"]
        calcs = re.findall(r"<<([^=<>]+)=(-?\d+)>>", row["answer"])
        assert len(calcs) >= 2  # multi-step
        for expression, result in calcs:
            assert eval(expression.replace("/", "//")) == int(result), expression  # noqa: S307
        assert calcs[-1][1] == final.group(1)
