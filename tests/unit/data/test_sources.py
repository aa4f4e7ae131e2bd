"""Sources: local files of every kind, samples, hub ids, derived splits, malformed rows."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmft.data import sources
from llmft.data.sources import count_rows, load_rows, read_rows, source_fingerprint
from llmft.errors import LlmftError
from llmft.tasks import get_task
from tests.support.tiny_tokenizer import make_cfg, write_jsonl

GOOD = {"prompt": "Q: 1+1\n\n###\n\n", "completion": " 2"}


def test_jsonl_rows_and_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, "", {"prompt": "p", "completion": " c"}])
    cfg = make_cfg(tmp_path, "prompt_completion", str(path))
    assert load_rows(cfg, "train") == [GOOD, {"prompt": "p", "completion": " c"}]
    assert read_rows(cfg, "train").where == [f"{path} line 1", f"{path} line 3"]
    assert count_rows(cfg, "train") == 2
    assert count_rows(cfg, "valid") == 0


def test_broken_json_on_line_3_names_line_3(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, '{"prompt": "x", "completion": ', GOOD])
    cfg = make_cfg(tmp_path, "prompt_completion", str(path))
    with pytest.raises(LlmftError, match=r"d\.jsonl line 3: invalid JSON") as exc:
        load_rows(cfg, "train")
    assert "line 1" not in str(exc.value) and "line 4" not in str(exc.value)


@pytest.mark.parametrize("row, message", [
    ({"prompt": "x"}, "line 2: missing field `completion`"),
    ({"prompt": "x", "completion": 7}, "line 2: field `completion` must be a string"),
    ({"prompt": "x", "completion": ""}, "line 2: field `completion` is empty"),
    (["not", "an", "object"], "line 2: expected a JSON object"),
])
def test_malformed_rows_name_file_line_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, row])
    cfg = make_cfg(tmp_path, "prompt_completion", str(path))
    with pytest.raises(LlmftError, match=message):
        load_rows(cfg, "train")


def test_all_problems_are_collected(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["{", GOOD, {"prompt": 1, "completion": "x"}])
    result = read_rows(make_cfg(tmp_path, "prompt_completion", str(path)), "train")
    assert [p.split(":")[0] for p in result.problems] == [f"{path} line 1", f"{path} line 3"]
    assert result.rows == [GOOD]


def test_json_parquet_and_csv_files(tmp_path):
    rows = [GOOD, {"prompt": "a", "completion": " b"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with (tmp_path / "d.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "completion"])
        writer.writeheader()
        writer.writerows(rows)
    for name in ("d.json", "d.parquet", "d.csv"):
        assert load_rows(make_cfg(tmp_path, "prompt_completion", str(tmp_path / name)), "train") == rows, name


def test_relative_paths_are_relative_to_the_current_directory(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "rel.jsonl", [GOOD])
    monkeypatch.chdir(tmp_path)
    assert load_rows(make_cfg(tmp_path, "prompt_completion", "rel.jsonl"), "train") == [GOOD]


def test_missing_file_and_unset_split(tmp_path):
    cfg = make_cfg(tmp_path, "prompt_completion", str(tmp_path / "nope.jsonl"))
    with pytest.raises(LlmftError, match="does not exist"):
        load_rows(cfg, "train")
    with pytest.raises(LlmftError, match="data.valid is not set"):
        load_rows(cfg, "valid")


def test_sample_sources(tmp_path):
    cfg = make_cfg(tmp_path, "viggo", "sample:viggo@train", valid="sample:viggo")
    assert len(load_rows(cfg, "train")) == 3000
    assert len(load_rows(cfg, "valid")) == 200  # the split being loaded
    assert source_fingerprint(cfg, "valid") != source_fingerprint(cfg, "train")
    with pytest.raises(LlmftError, match="no sample data"):
        load_rows(make_cfg(tmp_path, "chat", "sample:chat"), "train")


def test_file_fingerprint_follows_the_bytes(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    cfg = make_cfg(tmp_path, "prompt_completion", str(path))
    before = source_fingerprint(cfg, "train")
    assert source_fingerprint(cfg, "train") == before
    write_jsonl(path, [GOOD, GOOD])
    assert source_fingerprint(cfg, "train") != before


def test_unreachable_or_unknown_hub_dataset_says_to_give_a_local_file(tmp_path):
    cfg = make_cfg(tmp_path, "sql", "llmft-tests/no-such-dataset-7c1f@train")
    with pytest.raises(LlmftError, match="local file"):
        load_rows(cfg, "train")


def test_hub_split_mapping():
    viggo, sql, gsm8k = (get_task(n) for n in ("viggo", "sql", "gsm8k"))
    assert sources._parse_hub("GEM/viggo@valid", "valid", viggo).hub_split == "validation"
    ref = sources._parse_hub("b-mc2/sql-create-context@test", "test", sql)
    assert (ref.hub_split, ref.derive, ref.derived_splits) == ("train", True, ("train", "valid", "test"))
    ref = sources._parse_hub("openai/gsm8k:main@valid", "valid", gsm8k)
    assert (ref.config, ref.hub_split, ref.derived_splits) == ("main", "train", ("train", "valid"))
    ref = sources._parse_hub("gsm8k@test", "test", gsm8k)  # the short name of the task's dataset
    assert (ref.path, ref.config, ref.hub_split, ref.derive) == ("openai/gsm8k", "main", "test", False)
    assert sources._parse_hub("someone/data@validation", "valid", sql).hub_split == "validation"


@pytest.mark.parametrize("derived, sizes", [(("train", "valid", "test"), {"train": 900, "valid": 50, "test": 50}),
                                            (("train", "valid"), {"train": 950, "valid": 50})])
def test_derived_splits_partition_train_reproducibly(derived, sizes):
    rows = [{"i": i} for i in range(1000)]
    parts = {s: sources._derived_split(rows, s, derived, seed=42) for s in derived}
    assert {s: len(p) for s, p in parts.items()} == sizes
    assert sorted(r["i"] for p in parts.values() for r in p) == list(range(1000))
    assert sources._derived_split(rows, "valid", derived, seed=42) == parts["valid"]
    assert sources._derived_split(rows, "valid", derived, seed=7) != parts["valid"]


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_jsonl_ranges_cover_every_line_once_with_its_number(tmp_path, ending):
    lines = [json.dumps({"prompt": f"p{i}" * (i % 5 + 1), "completion": " c"}) for i in range(50)]
    lines[20] = ""
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(line.replace("\n", ending) for line in lines) + ending)
    ranges = sources.jsonl_ranges(path, str(path), 7)
    assert len(ranges) == 7 and ranges[0].start == 0 and ranges[-1].end == path.stat().st_size
    assert all(a.end == b.start for a, b in zip(ranges, ranges[1:]))
    rows, where = [], []
    for part in ranges:
        piece = sources.read_range(part)
        assert not piece.problems
        rows += piece.rows
        where += piece.where
    assert rows == [json.loads(line) for line in lines if line]
    assert where == [f"{path} line {i + 1}" for i, line in enumerate(lines) if line]
