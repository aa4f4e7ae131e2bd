"""`llmft prepare`: the report's numbers, malformed rows (exit 2, nothing written), warnings."""

from __future__ import annotations

import json
from pathlib import Path


from llmft.data.prepare import build_report, run_prepare
from tests.support.tiny_tokenizer import make_cfg, write_jsonl

PC = [{"prompt": f"Question {i}: how many?\n\n###\n\n", "completion": f" {i} items\n"} for i in range(20)]


def test_json_report_for_the_viggo_sample(tmp_path, tiny_tokenizer, capsys):
    cfg = make_cfg(tmp_path, "viggo", "sample:viggo@train", valid="sample:viggo@valid", max_length=128)
    run_prepare(cfg, as_json=True, tokenizer=tiny_tokenizer)
    report = json.loads(capsys.readouterr().out)
    train = report["splits"]["train"]
    assert (train["rows"], report["splits"]["valid"]["rows"]) == (3000, 200)
    assert train["examples"] == 3000 - train["over_length"]
    assert train["duplicates"] == 0 and report["splits"]["valid"]["prompts_also_in_train"] == 0
    p = train["prompt_tokens"]
    assert 0 < p["p50"] <= p["p90"] <= p["p99"] <= p["max"] <= 128
    assert report["training"]["trained_tokens_per_epoch"] == train["trained_tokens"] > 0
    eff = report["training"]["padding_efficiency"]
    assert 0 < eff["padding_to_max_length"] < eff["packing"] <= 1
    assert 0 < eff["length_grouped_padding"] <= 1
    runs = report["examples"][0]["runs"]
    assert [r["trained"] for r in runs] == [False, True]
    assert runs[1]["text"].strip().endswith("<END_MR>")
    import pyarrow.parquet as pq

    for split in ("train", "valid"):  # each split's own cache, holding exactly that split's examples
        shards = list(Path(report["splits"][split]["cache"]).glob("part-*.parquet"))
        assert sum(pq.read_metadata(shard).num_rows for shard in shards) == report["splits"][split]["examples"] > 0


def test_human_report_marks_trained_text(tmp_path, tiny_tokenizer, capsys):
    cfg = make_cfg(tmp_path, "gsm8k", "sample:gsm8k@train", max_length=256)
    run_prepare(cfg, as_json=False, tokenizer=tiny_tokenizer)
    out = capsys.readouterr().out
    assert "Padding efficiency" in out and "trained tokens per epoch" in out
    assert "⟦" in out and "<END_A>⟧" in out  # not a terminal: trained text in brackets


def prepare_cli(tmp_path, model_dir, train, **data):
    """`llmft prepare` as a user runs it, on a config file naming `train`."""
    from click.testing import CliRunner

    from llmft.cli import main

    section = {"task": "prompt_completion", "train": str(train), "cache_dir": str(tmp_path / "cache"), **data}
    config = tmp_path / "prepare.yaml"
    config.write_text(json.dumps({"model": {"name_or_path": str(model_dir)}, "data": section,
                                  "training": {"global_batch_size": 4}}))
    return CliRunner().invoke(main, ["prepare", str(config)])


def test_broken_line_3_exits_2_naming_line_3_and_writes_nothing(tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "train.jsonl", [PC[0], PC[1], '{"prompt": "x"', PC[2]])
    result = prepare_cli(tmp_path, tiny_model_dir, path)
    assert result.exit_code == 2, result.output
    assert "train.jsonl line 3: invalid JSON" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "cache").exists()


def test_prompt_completion_separator_and_ending_checks(tmp_path, tiny_tokenizer):
    cfg = make_cfg(tmp_path, "prompt_completion", str(write_jsonl(tmp_path / "good.jsonl", PC)))
    report = build_report(cfg, tiny_tokenizer)
    assert report["prompt_completion"]["common_prompt_separator"].endswith("\n\n###\n\n")
    assert report["prompt_completion"]["common_completion_ending"] == " items\n"
    assert not report["warnings"]

    bad = [{"prompt": "Tell me a", "completion": " joke."}, {"prompt": "Sum 2 and 2", "completion": " 4"}]
    cfg = make_cfg(tmp_path, "prompt_completion", str(write_jsonl(tmp_path / "bad.jsonl", bad)))
    warnings = " ".join(build_report(cfg, tiny_tokenizer)["warnings"])
    assert "common separator" in warnings and "common stop sequence" in warnings


def test_duplicates_and_over_length_are_reported(tmp_path, tiny_tokenizer):
    long = {"prompt": "word " * 60 + "\n\n###\n\n", "completion": " x items\n"}
    cfg = make_cfg(tmp_path, "prompt_completion", str(write_jsonl(tmp_path / "d.jsonl", PC + [PC[3], long])),
                   max_length=48)
    report = build_report(cfg, tiny_tokenizer)
    train = report["splits"]["train"]
    assert train["duplicates"] == 1 and "line 21 repeats" in train["duplicate_rows"][0]
    assert train["over_length"] == 1 and train["examples"] == 21
    assert any("longer than data.max_length = 48" in w for w in report["warnings"])


def test_over_length_error_policy_exits_2(tmp_path, tiny_model_dir):
    long = {"prompt": "word " * 60 + "\n\n###\n\n", "completion": " x items\n"}
    result = prepare_cli(tmp_path, tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", PC + [long]),
                         max_length=48, over_length="error")
    assert result.exit_code == 2, result.output
    assert "line 21" in result.output and "Traceback" not in result.output
