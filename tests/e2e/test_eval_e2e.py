"""`llmft eval` on both Ray engines, `llmft generate` and `llmft compare`, end to end.

One embedded Ray (2 CPUs) serves the module. The tiny Llama and SmolLM2-135M are each evaluated
with the replicas engine (2 Ray Data model replicas) and the zero3 engine (a 2-worker Ray Train
group holding the model partitioned with DeepSpeed ZeRO-3), on the same prompts in the same
batches. What these catch: engines whose greedy answers differ (batches grouped or padded
differently, a ZeRO-3 model loaded or gathered wrongly, answers returned out of order or cut
differently), generation that ignores the stop marker, results missing the engine, parameter
count or stop reasons, `llmft generate` answering other than `llmft eval` for the same rows,
compare unable to read what eval writes, and engines that cannot run (more ZeRO-3 workers than
the cluster has) crashing or hanging instead of exiting 2.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from llmft.cli import main
from llmft.config import load_config
from llmft.data.sources import load_rows
from llmft.eval.run import run_eval
from tests.support import REPO

pytestmark = pytest.mark.e2e

SCRIPTED_ANSWER = "inform(name[Portal])"


def evaluate(model_dir, out, engine: str, *overrides: str, limit: int, few_shot: int = 0) -> dict:
    cfg = load_config(REPO / "configs/viggo/tiny-cpu.yaml", [f"model.name_or_path={model_dir}", *overrides])
    return run_eval(cfg, model=None, split="test", limit=limit, few_shot=few_shot, out=str(out), address=None,
                    engine=engine)


def predictions(results_file) -> list[dict]:
    lines = results_file.with_suffix(".predictions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def answers(results_file) -> list[tuple[str, str]]:
    return [(p["prediction"], p["stop_reason"]) for p in predictions(results_file)]


@pytest.fixture(scope="module")
def tiny_runs(ray_session, tiny_model_dir, tmp_path_factory):
    """The tiny model, 2-shot, 7 prompts in batches of 3: a short last batch, so one zero3 worker
    repeats a batch to keep ZeRO-3's collectives in step."""
    out = tmp_path_factory.mktemp("eval-tiny")
    return {engine: (evaluate(tiny_model_dir, out / f"{engine}.json", engine, "eval.batch_size=3",
                              limit=7, few_shot=2), out / f"{engine}.json")
            for engine in ("replicas", "zero3")}


def test_tiny_model_same_answers_on_replicas_and_zero3(tiny_runs):
    (replicas, replicas_file), (zero3, zero3_file) = tiny_runs["replicas"], tiny_runs["zero3"]
    # (Order and the stop marker: test_each_answer_is_its_own_prompts_and_ends_at_the_stop_marker.
    # The file's own index and a marker-free answer would hold whatever the engines did: eval
    # numbers the lines itself and generation always cuts at the marker.)
    assert answers(zero3_file) == answers(replicas_file)
    for results, engine in ((replicas, "replicas"), (zero3, "zero3")):
        assert results["engine"] == engine and results["generation"]["workers"] == 2
        assert results["num_examples"] == 7 and results["few_shot"] == 2 and "exact_match" in results["metrics"]
        assert results["parameters"] == 356_672  # make-tiny's 2 layers x hidden 64, vocabulary 2048 (untied)
        assert sum(results["stop_reasons"].values()) == 7
        assert results["stop_reasons"] == {reason: sum(r == reason for _, r in answers(replicas_file))
                                           for reason in ("stop_token", "eos", "max_tokens")}
    assert zero3["data_hash"] == replicas["data_hash"]
    # The replicas engine times its own generate calls, which are inside the eval's generation time
    # (Ray's workers starting and the model loads are not); the zero3 engine does not tell.
    generation = replicas["generation"]
    assert 0 < generation["decoding_seconds"] < generation["seconds"]
    assert generation["decoding_examples_per_second"] == pytest.approx(7 / generation["decoding_seconds"])
    assert zero3["generation"]["decoding_seconds"] is None


def test_smollm2_same_answers_on_replicas_and_zero3(ray_session, smollm2_dir, tmp_path):
    """A real 135M model with a 49k-token BPE vocabulary and tied embeddings, in batches of 2."""
    files = {}
    for engine in ("replicas", "zero3"):
        files[engine] = tmp_path / f"{engine}.json"
        evaluate(smollm2_dir, files[engine], engine, "eval.batch_size=2", "eval.max_new_tokens=12", limit=4)
    assert answers(files["zero3"]) == answers(files["replicas"])
    assert sum(bool(text.strip()) for text, _ in answers(files["replicas"])) >= 2  # real text, not empty answers


def test_each_answer_is_its_own_prompts_and_ends_at_the_stop_marker(tiny_runs, tiny_model_dir, tmp_path):
    """Batched answers (replicas, batches of 3, left-padded) equal the same model answering one
    prompt at a time, in prompt order; a model scripted to say ANSWER then <END_MR> is cut
    exactly at the marker, on every prompt."""
    from llmft.eval.generate import Replica
    from llmft.eval.prompts import generation_inputs
    from llmft.models.tokenizer import load_tokenizer
    from tests.support.scripted_model import make_scripted_model

    results, results_file = tiny_runs["replicas"]
    cfg = load_config(REPO / "configs/viggo/tiny-cpu.yaml", [f"model.name_or_path={tiny_model_dir}"])
    inputs = generation_inputs(cfg, load_tokenizer(cfg), "test", limit=7, few_shot=2)
    alone = Replica(cfg, stop_token="<END_MR>", max_new_tokens=results["generation"]["max_new_tokens"])
    expected = [alone.generate([prompt])[0].text for prompt in inputs.prompts]
    assert len(set(expected)) > 3  # different enough that a shuffle would show
    lines = predictions(results_file)
    assert [p["prompt"] for p in lines] == [example.prompt for example in inputs.examples]
    assert [p["prediction"] for p in lines] == expected

    scripted = tmp_path / "scripted"
    make_scripted_model(tiny_model_dir, scripted, "viggo", after="<START_MR>", answer=SCRIPTED_ANSWER)
    evaluate(scripted, tmp_path / "scripted.json", "replicas", "eval.batch_size=3", limit=7, few_shot=2)
    assert answers(tmp_path / "scripted.json") == [(SCRIPTED_ANSWER, "stop_token")] * 7


def test_generate_gives_evals_answers_for_the_same_rows(tiny_runs, tiny_model_dir, tmp_path):
    """`llmft generate` on a JSONL of the test rows, 2-shot, batches of 3: eval's predictions."""
    results, results_file = tiny_runs["replicas"]
    rows = tmp_path / "rows.jsonl"
    cfg = load_config(REPO / "configs/viggo/tiny-cpu.yaml")
    rows.write_text("".join(json.dumps({"target": row["target"]}) + "\n" for row in load_rows(cfg, "test")[:7]))
    out = tmp_path / "answers.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "llmft.cli", "generate", str(tiny_model_dir), "--task", "viggo", "--input", str(rows),
         "--output", str(out), "--few-shot", "2", "--shots", "sample:viggo@train", "--batch-size", "3",
         "--max-new-tokens", str(results["generation"]["max_new_tokens"])],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    generated = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(g["prediction"], g["stop_reason"]) for g in generated] == answers(results_file)


def test_compare_reads_both_engines_results(tiny_runs, tmp_path):
    table, chart = tmp_path / "table.md", tmp_path / "chart.png"
    files = [str(tiny_runs[engine][1]) for engine in ("replicas", "zero3")]
    result = CliRunner().invoke(main, ["compare", *files, "--out", str(table), "--plot", str(chart),
                                       "--side-by-side", str(tmp_path / "side.md")])
    assert result.exit_code == 0, result.output
    assert "exact_match" in table.read_text() and "| 0.357M |" in table.read_text()
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "side.md").read_text().count("## Example") == 7


def test_zero3_with_more_workers_than_the_cluster_exits_2(ray_session, tiny_model_dir, tmp_path):
    result = CliRunner().invoke(main, [
        "eval", str(REPO / "configs/viggo/tiny-cpu.yaml"), f"model.name_or_path={tiny_model_dir}",
        "scaling.num_workers=3", "training.global_batch_size=12", "--engine", "zero3", "--limit", "2",
        "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 2, result.output
    assert "cannot place 3 workers" in " ".join(result.output.split()) and not (tmp_path / "r.json").exists()


def test_eval_missing_model_exits_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "llmft.cli", "eval", "configs/viggo/tiny-cpu.yaml", "--model",
                           str(tmp_path / "nope"), "--limit", "2"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "nope" in done.stderr
