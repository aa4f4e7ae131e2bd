"""Helpers of the benchmarks and the demo (scripts/bench/common.py, scripts/plot_metrics.py)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.support import REPO


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


common = _load("bench_common", REPO / "scripts" / "bench" / "common.py")
plot_metrics = _load("plot_metrics", REPO / "scripts" / "plot_metrics.py")


def test_step_figures_leave_out_warmup_and_use_llmft_records():
    # llmft's metrics.jsonl carries trained_tokens_per_second and step_time, not token counts.
    records = [{"step": 1, "step_time": 100.0, "trained_tokens_per_second": 1.0},   # warm-up, left out
               {"step": 2, "step_time": 2.0, "trained_tokens_per_second": 50.0},    # 100 tokens
               {"step": 3, "step_time": 3.0, "trained_tokens_per_second": 100.0}]   # 300 tokens
    figures = common.step_figures(records)
    assert figures["steps"] == 2
    assert figures["trained_tokens"] == 400
    assert figures["seconds_per_trained_token"] == pytest.approx(5.0 / 400)
    assert figures["trained_tokens_per_second"] == pytest.approx(80.0)


def test_step_figures_need_a_step_after_warmup():
    with pytest.raises(ValueError):
        common.step_figures([{"step": 1, "step_time": 1.0, "trained_tokens": 5}])


def test_render_readme_has_a_row_per_figure_and_marks_missed_goals_and_dirty_trees():
    results = [{"benchmark": "x", "command": "python scripts/bench/x.py", "finished": "2026-11-22T01:00:00+0000",
                "summary": [common.summary_row("speed", "2.0x", ">= 3x", False),
                            common.summary_row("max |a - b|", "40 s")],
                "tree": {"git_commit": "0123456789abcdef", "git_dirty": True, "load_average_before": [3.5, 3.0, 2.0],
                         "load_average_after": [1.25, 1.0, 1.0]},
                "machine": {"load_average": [1.25, 1.0, 1.0], "cpu_model": "CPU", "logical_cpus": 2,
                            "memory_gib": 24, "versions": {"torch": "2.13"}}}]
    text = common.render_readme(results)
    rows = [line for line in text.splitlines() if line.startswith("| `python scripts/bench/x.py`")]
    assert len(rows) == 2
    assert "**no**" in rows[0] and ">= 3x" in rows[0] and "3.5 -> 1.2" in rows[0]
    assert "01234567 DIRTY" in rows[0]
    assert "max \\|a - b\\|" in rows[1]  # a bare | would split the cell
    assert all(row.count(" | ") == 6 for row in rows)


def test_check_tree_refuses_uncommitted_changes_and_too_few_samples(monkeypatch):
    monkeypatch.setattr(common, "_git", lambda *args: " M llmft/x.py" if args[0] == "status" else "abc123")
    with pytest.raises(SystemExit, match="uncommitted"):
        common.check_tree(argparse.Namespace(samples=3, allow_dirty=False))
    marked = common.check_tree(argparse.Namespace(samples=3, allow_dirty=True))
    assert marked["git_dirty"] is True and marked["git_commit"] == "abc123"
    monkeypatch.setattr(common, "_git", lambda *args: "" if args[0] == "status" else "abc123")
    with pytest.raises(SystemExit, match="at least 3"):
        common.check_tree(argparse.Namespace(samples=2, allow_dirty=False))
    clean = common.check_tree(argparse.Namespace(samples=3, allow_dirty=False))
    assert clean["git_dirty"] is False and len(clean["load_average_before"]) == 3


def test_arms_run_interleaved_and_figures_are_min_median_max():
    order = []
    results = common.interleaved({"a": lambda: order.append("a") or len(order), "b": lambda: order.append("b") or 0},
                                 3)
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert results["a"] == [1, 3, 5]
    figure = common.spread([3.0, 1.0, 2.0])
    assert (figure["min"], figure["median"], figure["max"], figure["n"]) == (1.0, 2.0, 3.0, 3)
    assert common.ratio_of_medians([4.0, 6.0, 5.0], common.spread([1.0, 2.0, 9.0])) == 2.5


def test_write_result_saves_tree_and_machine_details_and_refreshes_readme(tmp_path):
    tree = {"git_commit": "abc", "git_dirty": False, "samples_per_arm": 3, "load_average_before": [0.5, 0.5, 0.5]}
    path = common.write_result("demo_bench", {"summary": [common.summary_row("figure", "1")]}, tree=tree,
                               bench_dir=tmp_path)
    saved = json.loads(path.read_text())
    assert saved["machine"]["logical_cpus"] >= 1
    assert saved["machine"]["versions"]["torch"]
    assert saved["tree"]["git_commit"] == "abc" and len(saved["tree"]["load_average_after"]) == 3
    assert "figure" in (tmp_path / "README.md").read_text()
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_read_proc_status_reports_this_process_in_bytes():
    status = common.read_proc_status()
    assert status["VmHWM"] >= status["RssAnon"] > 1024 * 1024


def test_pad_batch_to_512_gives_the_unpadded_logits():
    # The reference recipe's batching (each example padded to 512 with a 2D mask) must compute
    # the same thing as llmft's collate, or the packing benchmark compares different work.
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmft.data.batching import collate
    from tests.support.batches import examples_of

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    columns = examples_of([[1, 5, 6, 7], [1, 8, 9]], [[-100, 5, 6, 7], [-100, 8, 9]])
    tight = collate(columns, [[0], [1]], pad_id=0, block_mask=True)
    padded = common.pad_batch(collate(columns, [[0], [1]], pad_id=0, block_mask=True), 512, pad_id=0)
    assert padded["input_ids"].shape == (2, 512)
    assert int((padded["labels"] != -100).sum()) == 5
    with torch.no_grad():
        a = model(input_ids=tight["input_ids"], attention_mask=tight["attention_mask"],
                  position_ids=tight["position_ids"]).logits
        b = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"],
                  position_ids=padded["position_ids"]).logits
    real = tight["segment_ids"] > 0
    torch.testing.assert_close(a[real], b[:, :a.shape[1]][real], rtol=1e-4, atol=1e-5)


def test_pad_batch_refuses_rows_longer_than_the_width():
    from llmft.data.batching import collate
    from tests.support.batches import examples_of

    columns = examples_of([[1] * 10], [[1] * 10])
    with pytest.raises(ValueError):
        common.pad_batch(collate(columns, [[0]], pad_id=0, block_mask=True), 8, pad_id=0)


def test_loss_series_keeps_the_last_record_of_a_step(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "train_loss": 3.0}, {"step": 2, "train_loss": 2.0}, {"step": 2, "valid_loss": 2.5},
        {"step": 2, "train_loss": 1.5}]) + "\n")
    records = plot_metrics.read_metrics(tmp_path)
    assert plot_metrics.loss_series(records, "train_loss") == ([1, 2], [3.0, 1.5])
    assert plot_metrics.loss_series(records, "valid_loss") == ([2], [2.5])


def test_plot_loss_curve_writes_a_png(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "train_loss": 3.0 / s}) + "\n" for s in range(1, 6)))
    out = plot_metrics.plot_loss_curve(tmp_path, tmp_path / "loss.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_loss_curve_refuses_a_run_without_train_loss(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "valid_loss": 1.0}) + "\n")
    with pytest.raises(ValueError):
        plot_metrics.plot_loss_curve(tmp_path, tmp_path / "loss.png")


def test_workers_peak_breakdown_splits_the_whole_peak_and_names_the_rest():
    sys.path.insert(0, str(REPO / "scripts" / "bench"))  # workers.py imports `common` by name
    workers = _load("bench_workers", REPO / "scripts" / "bench" / "workers.py")
    plan = {"activations_gib": {"with_checkpointing": 0.3, "without_checkpointing": 1.0, "counted": "without_checkpointing",
                                "of_which_loss": 0.2},
            "items_gib": {"weights": 0.5, "ZeRO-3 working set": 0.2, "comm. buckets": 0.05}}
    split = workers.peak_breakdown({"after_imports": 0.25, "first_step_peak": 5.0}, 2.5, plan)
    assert split == {"peak": 5.0, "runtime": 0.25, "model states": 2.5, "activations (plan)": 0.8,
                     "logits and loss (plan)": 0.2, "DeepSpeed buffers (plan)": 0.25, "rest": 1.0}
