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


ANSWER = "inform(name[Portal])"


def test_eval_two_workers_then_compare(tiny_model_dir, tmp_path):
    from llmft.config import load_config
    from llmft.eval.generate import Generator
    from llmft.eval.prompts import generation_inputs
    from llmft.models.tokenizer import load_tokenizer
    from tests.support.scripted_model import make_scripted_model

    # 0-shot: the random tiny model, whose answers differ from prompt to prompt. 2-shot: a model
    # that answers ANSWER and then <END_MR> to every prompt.
    scripted = tmp_path / "scripted"
    make_scripted_model(tiny_model_dir, scripted, "viggo", after="<START_MR>", answer=ANSWER)
    models = {0: tiny_model_dir, 2: scripted}
    runs = {}
    for shots, model in models.items():
        out = tmp_path / f"eval-{shots}.json"
        done = llmft("eval", "configs/viggo/tiny-cpu.yaml", f"model.name_or_path={model}",
                     "--limit", "12", "--few-shot", str(shots), "--out", str(out))
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        runs[shots] = json.loads(out.read_text())
        assert runs[shots]["num_examples"] == 12 and "exact_match" in runs[shots]["metrics"]
        assert runs[shots]["data_hash"] and runs[shots]["generation"]["workers"] == 2
    # Each line holds the answer to its own prompt: the same model here, one prompt at a time.
    cfg = load_config(REPO / "configs/viggo/tiny-cpu.yaml", [f"model.name_or_path={tiny_model_dir}"])
    inputs = generation_inputs(cfg, load_tokenizer(cfg), "test", limit=12)
    alone = Generator(str(tiny_model_dir), stop_token="<END_MR>", max_new_tokens=inputs.max_new_tokens,
                      use_gpu=False, dtype="float32")
    expected = [alone.generate([prompt])[0] for prompt in inputs.prompts]
    assert len(set(expected)) > 6  # different enough that a shuffle would show
    lines = [json.loads(line) for line in (tmp_path / "eval-0.predictions.jsonl").read_text().splitlines()]
    assert [(p["prompt"], p["prediction"]) for p in lines] == list(zip(inputs.prompts, expected))
    # The scripted model emits <END_MR> after ANSWER: every answer ends right there.
    lines = [json.loads(line) for line in (tmp_path / "eval-2.predictions.jsonl").read_text().splitlines()]
    assert [p["prediction"] for p in lines] == [ANSWER] * 12
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
