"""`llmft generate`: user errors exit 2 before the model loads, and answers come out as `llmft eval`
would give them (the equality with eval's predictions on the same rows is tested end to end)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llmft.cli import main
from llmft.eval.generate import Replica
from llmft.eval.run import eval_config
from tests.support import model_config
from tests.support.s3 import s3_server  # noqa: F401  (fixture)


def generate(*args: str):
    return CliRunner().invoke(main, ["generate", *args])


def message(result) -> str:
    return " ".join(result.output.split())


def test_a_missing_model_path_exits_2(tmp_path):
    result = generate(str(tmp_path / "no-model"), "--task", "viggo", "--text", "hi")
    assert result.exit_code == 2 and "no-model: no such folder" in message(result)


def test_a_row_missing_a_task_field_exits_2_naming_file_line_and_field(tiny_model_dir, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"target": "fine"}) + "\n" + json.dumps({"text": "oops"}) + "\n")
    result = generate(str(tiny_model_dir), "--task", "viggo", "--input", str(rows))
    assert result.exit_code == 2
    assert "rows.jsonl line 2: missing field `target` (task viggo reads target)" in message(result)
    assert not (tmp_path / "rows.predictions.jsonl").exists()


@pytest.mark.parametrize("args, expected", [
    (["--task", "sql", "--text", "How many?"], "--field question=... --field context=..."),
    (["--task", "viggo", "--text", "a", "--prompt", "b"], "Give one input"),
    (["--task", "viggo", "--text", "a", "--top-p", "0.9"], "needs --temperature > 0"),
    (["--task", "viggo", "--text", "a", "--few-shot", "2"], "--few-shot draws solved examples"),
    (["--task", "nope", "--text", "a"], "is not a task"),
    (["--text", "a"], "Which task's format?"),
    (["--task", "viggo", "--field", "target"], "is not of the form NAME=VALUE"),
])
def test_bad_arguments_exit_2(tiny_model_dir, args, expected):
    result = generate(str(tiny_model_dir), *args)
    assert result.exit_code == 2 and expected in message(result), result.output


def test_one_row_prints_the_answer_a_replica_gives(tiny_model_dir):
    result = generate(str(tiny_model_dir), "--task", "viggo", "--text", "What do you think of Iron Tide?",
                      "--max-new-tokens", "6")
    assert result.exit_code == 0, result.output
    replica = Replica(eval_config(model_config(tiny_model_dir)), stop_token="<END_MR>", max_new_tokens=6)
    expected = replica.generate(["<START_TEXT>What do you think of Iron Tide?<END_TEXT><START_MR>"])[0].text
    assert result.stdout.strip().endswith(expected)


def test_sampling_follows_the_seed(tiny_model_dir, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"target": "What do you think of Iron Tide?"}) + "\n")

    def sample(seed: str) -> str:
        out = tmp_path / f"out-{seed}.jsonl"
        result = generate(str(tiny_model_dir), "--task", "viggo", "--input", str(rows), "--output", str(out),
                          "--temperature", "1.5", "--seed", seed, "--max-new-tokens", "8")
        assert result.exit_code == 0, result.output
        return json.loads(out.read_text())["prediction"]

    assert sample("1") == sample("1")
    assert len({sample(str(seed)) for seed in range(2, 6)}) > 1  # sampled, not greedy


def test_a_model_in_a_bucket_answers_as_the_local_folder(s3_server, tiny_model_dir, tmp_path):  # noqa: F811
    import pyarrow.fs as pafs

    bucket = s3_server.new_bucket()
    pafs.copy_files(str(tiny_model_dir), f"{bucket}/run/model", destination_filesystem=s3_server.filesystem())
    args = ["--task", "viggo", "--text", "What do you think of Iron Tide?", "--max-new-tokens", "6"]
    local = generate(str(tiny_model_dir), *args)
    remote = generate(s3_server.uri(bucket, "run/model"), *args)
    assert remote.exit_code == 0, remote.output
    assert remote.stdout.strip().splitlines()[-1] == local.stdout.strip().splitlines()[-1]
