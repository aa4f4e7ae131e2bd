"""`llmft compare`: table (smallest model first), chart, side-by-side view, and the refusals: other
tasks, other test sets or few-shot settings unless allowed, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmft.errors import LlmftError
from llmft.eval.compare import load_results, metric_columns, rate_columns, run_compare
from tests.support.s3 import s3_server  # noqa: F401  (fixture)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_results(folder: Path, label: str, task: str = "viggo", exact: float = 0.5,
                  predictions: list[str] | None = None, **extra) -> Path:
    predictions = predictions if predictions is not None else ["inform(name[X])", "request(name[Y])"]
    references = ["inform(name[X])", "inform(name[Y])"]
    pred_file = folder / f"{label}.predictions.jsonl"
    pred_file.write_text("".join(
        json.dumps({"index": i, "prompt": f"prompt {i}" + (" <shots>" if label == "tuned" else ""),
                    "reference": ref, "prediction": pred, "correct": pred == ref}) + "\n"
        for i, (pred, ref) in enumerate(zip(predictions, references))))
    results = {"task": task, "model": f"/models/{label}", "label": label, "split": "test",
               "few_shot": 0, "num_examples": 2, "data_hash": "abc", "config": {},
               "metrics": {"exact_match": exact, "function_accuracy": 0.75, "unparseable": 1,
                           "num_examples": 2},
               "predictions_file": pred_file.name, **extra}
    path = folder / f"{label}.json"
    path.write_text(json.dumps(results))
    return path


def test_writes_table_chart_and_side_by_side(tmp_path, capsys):
    base = write_results(tmp_path, "base", exact=0.25)
    tuned = write_results(tmp_path, "tuned", exact=1.0,
                          predictions=["inform(name[X])", "inform(name[Y]) <script>"])
    out, plot, side = tmp_path / "out/table.md", tmp_path / "chart.png", tmp_path / "side.md"
    run_compare([str(base), str(tuned)], out=str(out), plot=str(plot), side_by_side=str(side))

    table = out.read_text()
    assert "| model | params | split | few-shot | exact_match | function_accuracy | unparseable | num_examples |" in table
    assert "| base | – | test | 0 | 0.250 | 0.750 | 1 | 2 |" in table
    assert "| tuned | – | test | 0 | 1.000 |" in table
    assert plot.read_bytes().startswith(PNG_SIGNATURE) and plot.stat().st_size > 1000
    assert "base" in capsys.readouterr().out

    view = side.read_text()
    assert view.count("## Example") == 2
    assert "**tuned** (wrong)" in view and "**base** (correct)" in view
    assert "prompt 1\n" in view and "<shots>" not in view  # the shortest (zero-shot) prompt
    assert not list(tmp_path.glob(".*.tmp")) and not list((tmp_path / "out").glob(".*.tmp"))


def test_side_by_side_html_is_escaped(tmp_path):
    base = write_results(tmp_path, "base")
    tuned = write_results(tmp_path, "tuned", predictions=["inform(name[X])", "<script>alert(1)</script>"])
    side = tmp_path / "side.html"
    run_compare([str(base), str(tuned)], out=None, plot=None, side_by_side=str(side))
    page = side.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<tr>") == 3  # header + two examples


def test_only_rates_are_plotted():
    results = [{"metrics": {"exact_match": 0.5, "unparseable": 1, "token_f1": 0.9, "big": 3.5,
                            "confusion_matrix": {"a": {"a": 1}}}},
               {"metrics": {"exact_match": 1, "unparseable": 0, "token_f1": 0.1, "big": 0.5}}]
    columns = metric_columns(results)
    assert columns == ["exact_match", "unparseable", "token_f1", "big"]
    # Counts (ints) and values above 1 are not rates; a rate stored as a bare 1 still is.
    assert rate_columns(results, columns) == ["exact_match", "token_f1"]


def test_mixed_tasks_are_refused(tmp_path):
    viggo = write_results(tmp_path, "base")
    sql = write_results(tmp_path, "sqlmodel", task="sql")
    out = tmp_path / "table.md"
    with pytest.raises(LlmftError, match=r"results file .*sqlmodel.json is for task sql but .*base.json is for viggo"):
        run_compare([str(viggo), str(sql)], out=str(out), plot=None, side_by_side=None)
    assert not out.exists()


def test_missing_file_not_json_and_missing_keys(tmp_path):
    with pytest.raises(LlmftError, match="does not exist"):
        load_results(str(tmp_path / "nope.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(LlmftError, match="broken.json is not valid JSON"):
        load_results(str(broken))
    keyless = tmp_path / "keyless.json"
    keyless.write_text(json.dumps({"task": "viggo", "model": "m"}))
    with pytest.raises(LlmftError, match="keyless.json lacks the key\\(s\\) metrics"):
        load_results(str(keyless))
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(LlmftError, match="JSON list"):
        load_results(str(listed))


def test_missing_predictions_file_fails_before_writing(tmp_path):
    base = write_results(tmp_path, "base")
    (tmp_path / "base.predictions.jsonl").unlink()
    out = tmp_path / "table.md"
    with pytest.raises(LlmftError, match="base.predictions.jsonl named in .*does not exist"):
        run_compare([str(base)], out=str(out), plot=None, side_by_side=str(tmp_path / "side.md"))
    assert not out.exists()


def test_duplicate_labels_are_told_apart(tmp_path):
    first = write_results(tmp_path, "base")
    (tmp_path / "copy").mkdir()
    second = tmp_path / "copy" / "other.json"
    second.write_text(first.read_text())
    out = tmp_path / "table.md"
    run_compare([str(first), str(second)], out=str(out), plot=None, side_by_side=None)
    table = out.read_text()
    assert "| base (base.json) |" in table and "| base (other.json) |" in table


def test_cli_exit_code_on_mixed_tasks(tmp_path):
    from click.testing import CliRunner

    from llmft.cli import main

    viggo = write_results(tmp_path, "base")
    gsm = write_results(tmp_path, "math", task="gsm8k")
    result = CliRunner().invoke(main, ["compare", str(viggo), str(gsm)])
    assert result.exit_code == 2
    assert "is for task gsm8k" in " ".join(result.output.split())


def test_results_and_outputs_in_a_bucket(s3_server, tmp_path):  # noqa: F811
    import pyarrow.fs as pafs

    from llmft import storage

    write_results(tmp_path, "base", exact=0.25)
    write_results(tmp_path, "tuned", exact=1.0)
    bucket = s3_server.new_bucket()
    pafs.copy_files(str(tmp_path), f"{bucket}/eval", destination_filesystem=s3_server.filesystem())
    evals = s3_server.uri(bucket, "eval")
    out, plot, side = (storage.join(evals, name) for name in ("table.md", "chart.png", "side.md"))
    run_compare([storage.join(evals, "base.json"), storage.join(evals, "tuned.json")],
                out=out, plot=plot, side_by_side=side)  # the predictions are found beside each results file
    assert "| tuned | – | test | 0 | 1.000 |" in storage.read_text(out)
    assert storage.read_text(side).count("## Example") == 2
    assert {"eval/table.md", "eval/chart.png", "eval/side.md"} <= set(s3_server.keys(bucket))
    with pytest.raises(LlmftError, match="does not exist"):
        load_results(storage.join(evals, "nope.json"))


def test_sizes_are_sorted_smallest_first(tmp_path):
    paths = [write_results(tmp_path, label, parameters=parameters, exact=exact)
             for label, parameters, exact in (("70b", 68_976_648_192, 0.9), ("7b", 6_738_415_616, 0.7), ("unknown", None, 0.1),
                                              ("13b", 13_015_864_320, 0.8), ("smol", 134_515_008, 0.2))]
    out, plot = tmp_path / "table.md", tmp_path / "chart.png"
    run_compare([str(p) for p in paths], out=str(out), plot=str(plot), side_by_side=None)
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "exact_match" not in line]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| smol", "135M"], ["| 7b", "6.74B"], ["| 13b", "13.02B"], ["| 70b", "68.98B"], ["| unknown", "–"]]
    assert plot.read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("key, value", [("data_hash", "other"), ("split", "valid"), ("num_examples", 3),
                                        ("few_shot", 3)])
def test_other_test_sets_or_few_shot_settings_are_refused_unless_allowed(tmp_path, key, value):
    first = write_results(tmp_path, "base")
    second = write_results(tmp_path, "tuned", **{key: value})
    out = tmp_path / "table.md"
    with pytest.raises(LlmftError, match=f"tuned.json has a different .*{key}.*--allow-mixed"):
        run_compare([str(first), str(second)], out=str(out), plot=None, side_by_side=None)
    assert not out.exists()
    run_compare([str(first), str(second)], out=str(out), plot=None, side_by_side=None, allow_mixed=True)
    assert "| tuned |" in out.read_text()


def test_gsm8k_shows_strict_and_flexible_accuracy(tmp_path):
    metrics = {"accuracy": 0.6, "strict_accuracy": 0.4, "marker_rate": 0.5, "no_number": 1, "num_examples": 2}
    paths = [write_results(tmp_path, label, task="gsm8k", metrics=metrics) for label in ("base", "tuned")]
    out = tmp_path / "table.md"
    run_compare([str(p) for p in paths], out=str(out), plot=None, side_by_side=None)
    assert "| model | params | split | few-shot | accuracy | strict_accuracy |" in out.read_text()
    assert "| base | – | test | 0 | 0.600 | 0.400 |" in out.read_text()


def test_cli_allows_mixed_few_shot_when_told(tmp_path):
    from click.testing import CliRunner

    from llmft.cli import main

    base = write_results(tmp_path, "base", few_shot=3)
    tuned = write_results(tmp_path, "tuned")
    refused = CliRunner().invoke(main, ["compare", str(base), str(tuned)])
    assert refused.exit_code == 2 and "few-shot setting" in " ".join(refused.output.split())
    allowed = CliRunner().invoke(main, ["compare", str(base), str(tuned), "--allow-mixed"])
    assert allowed.exit_code == 0, allowed.output
