"""`llmft eval` and `llmft compare` end to end: 2 Ray Data model replicas, real generation.

What these catch: generation that ignores the stop token or the prompt format, predictions that
come back out of order from the workers, results/predictions files not written, compare unable
to read what eval writes, and user errors (missing model, mixed tasks) that crash instead of
exiting 2.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e
from tests.support import REPO


def llmft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmft.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_eval_two_workers_then_compare(tiny_model_dir, tmp_path):
    runs = {}
    for shots in (0, 2):
        out = tmp_path / f"eval-{shots}.json"
        done = llmft("eval", "configs/viggo/tiny-cpu.yaml", f"model.name_or_path={tiny_model_dir}",
                     "--limit", "12", "--few-shot", str(shots), "--out", str(out))
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        runs[shots] = json.loads(out.read_text())
        predictions = [json.loads(line) for line in out.with_suffix(".predictions.jsonl").read_text().splitlines()]
        assert [p["index"] for p in predictions] == list(range(12))
        assert all("<END_MR>" not in p["prediction"] for p in predictions)  # cut at the stop marker
        assert runs[shots]["num_examples"] == 12 and "exact_match" in runs[shots]["metrics"]
        assert runs[shots]["data_hash"] and runs[shots]["generation"]["workers"] == 2
    table, chart = tmp_path / "table.md", tmp_path / "chart.png"
    done = llmft("compare", str(tmp_path / "eval-0.json"), str(tmp_path / "eval-2.json"),
                 "--out", str(table), "--plot", str(chart), "--side-by-side", str(tmp_path / "side.md"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exact_match" in table.read_text() and chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "side.md").read_text().count("## Example") == 12

    # A results file of another task cannot be compared with these.
    other = json.loads((tmp_path / "eval-0.json").read_text()) | {"task": "sql"}
    (tmp_path / "sql.json").write_text(json.dumps(other))
    mixed = llmft("compare", str(tmp_path / "eval-0.json"), str(tmp_path / "sql.json"))
    assert mixed.returncode == 2 and "Traceback" not in mixed.stderr


def test_eval_missing_model_exits_2(tmp_path):
    done = llmft("eval", "configs/viggo/tiny-cpu.yaml", "--model", str(tmp_path / "nope"), "--limit", "2")
    assert done.returncode == 2 and "Traceback" not in done.stderr and "nope" in done.stderr
