"""Checkpoints, exact resume, worker-failure recovery and export, with real Ray + DeepSpeed.

The tiny model has attention dropout, so training draws random numbers at every step and a
resume matches the uninterrupted run only if the RNG states come back too. Every run is
compared with one uninterrupted reference run.

What these catch:
- a save cut short (before the shards, between two workers' shards, before a manifest, with a
  truncated shard) that still counts as a checkpoint, or a `--resume latest` that does not take
  the previous complete one; a resume that replays or skips data or loses optimizer, scheduler
  or RNG state (losses would differ from the reference's);
- a recovery after a dead worker (rank 1, then rank 0) that trains an example twice or not at
  all in an epoch, judged from what the model actually received, crashed attempts included;
- an export whose weights differ from the trained model's;
- resumes that cannot be exact (another world size or ZeRO stage) slipping through, and a user
  error inside a worker reaching the user as a Ray traceback instead of its message;
- TensorBoard or MLflow logging that writes nothing, or other numbers than metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from llmft.checkpoint import STATE_FILE, find_checkpoints, is_complete, manifest_name, problems, read_state
from llmft.config import load_config
from llmft.data.samples import generate_rows
from llmft.errors import LlmftError
from llmft.train.driver import run_training
from llmft.train.hooks import input_ids_hash
from llmft.train.logger import read_metrics
from tests.support import REPO

pytestmark = pytest.mark.e2e

NUM_EXAMPLES = 160  # 5 optimizer steps per epoch at 16 sequences per step


@pytest.fixture(scope="module")
def dropout_model_dir(tmp_path_factory) -> Path:
    from llmft.models.tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-dropout", dropout=0.1)


@pytest.fixture(scope="module")
def small_train_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "viggo-train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in generate_rows("viggo", "train")[:NUM_EXAMPLES]))
    return path


def config(model_dir, train_file, out, *overrides):
    return load_config(REPO / "configs/viggo/tiny-cpu.yaml", [
        f"model.name_or_path={model_dir}", f"output.dir={out}", f"data.train={train_file}", "data.valid=null",
        "training.max_steps=null", "training.epochs=2", "training.eval_every_steps=null",
        "training.generation_eval_every_steps=null", "training.checkpoint_every_steps=2",
        "training.warmup_steps=1", "logging.progress_bar=false", *overrides])


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in read_metrics(run_dir) if "train_loss" in r}


def assert_same_losses(run_dir: Path, reference: dict[int, float], steps) -> None:
    got = losses(run_dir)
    assert sorted(got) == sorted(steps), sorted(got)
    for step in steps:
        assert got[step] == pytest.approx(reference[step], abs=1e-5), step


@pytest.fixture(scope="module")
def reference(ray_session, dropout_model_dir, small_train_file, tmp_path_factory):
    """The uninterrupted run (10 steps, checkpoints after steps 2, 4, 5 (epoch end), 6, 8, 10),
    also logging to TensorBoard and a local MLflow folder."""
    out = tmp_path_factory.mktemp("runs")
    run_dir = Path(run_training(config(dropout_model_dir, small_train_file, out, "output.run_name=straight",
                                  "logging.tensorboard=true", f"logging.mlflow_tracking_uri={out / 'mlruns'}")))
    assert sorted(losses(run_dir)) == list(range(1, 11))
    return run_dir


def kept_records(trace: Path) -> tuple[list[dict], list[dict]]:
    """Every micro-batch record of every attempt, split into those that count and those a later
    attempt rolled back: an attempt that first trains step s restarted from the checkpoint after
    step s - 1, so an earlier attempt's records of step s or later were thrown away."""
    kept, rolled_back = [], []
    for path in sorted(trace.glob("examples_rank*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        attempts = list(dict.fromkeys(r["attempt"] for r in records))
        first_step = {a: min(r["step"] for r in records if r["attempt"] == a) for a in attempts}
        for i, attempt in enumerate(attempts):
            restart = min((first_step[a] for a in attempts[i + 1:]), default=math.inf)
            for record in (r for r in records if r["attempt"] == attempt):
                (kept if record["step"] < restart else rolled_back).append(record)
    return kept, rolled_back


def assert_each_example_once_per_epoch(trace: Path, cfg, epochs: int = 2) -> None:
    from llmft.data.batching import TokenizedExamples, collate
    from llmft.data.tokenize import tokenize_split
    from llmft.models.tokenizer import load_task_tokenizer
    from llmft.train.loop import batch_arguments

    kept, rolled_back = kept_records(trace)
    assert rolled_back, "no attempt was cut short: the test did not exercise a recovery"
    tokenizer = load_task_tokenizer(cfg)
    data = TokenizedExamples.from_table(tokenize_split(cfg, tokenizer, "train"))
    layout = batch_arguments(tokenizer.pad_token_id, torch.device("cpu"))  # as the loop collates
    for record in kept + rolled_back:  # the ids name exactly the tokens the model received
        batch = collate(data, record["rows"], pad_id=layout["pad_id"], block_mask=layout["block_mask"])
        assert input_ids_hash(batch["input_ids"]) == record["input_ids_sha1"], record
    per_rank = Counter((r["rank"], r["step"], r["micro"]) for r in kept)
    assert set(per_rank.values()) == {1}, [k for k, n in per_rank.items() if n > 1]  # no micro-batch twice
    for epoch in range(epochs):
        trained = Counter(i for r in kept if r["epoch"] == epoch for row in r["rows"] for i in row)
        assert trained == Counter(range(len(data))), epoch


SAVE_FAULTS = [(4, "before_shards"), (6, "between_ranks"), (8, "before_manifest"), (10, "truncated_shard")]


def test_a_save_cut_short_at_any_phase_resumes_from_the_previous_complete_checkpoint(
        reference, dropout_model_dir, small_train_file, tmp_path, monkeypatch):
    trace = tmp_path / "trace"
    trace.mkdir()
    monkeypatch.setenv("LLMFT_TRACE_DIR", str(trace))
    monkeypatch.setenv("LLMFT_FAULT_MARKER", str(tmp_path / "faults"))
    cfg = config(dropout_model_dir, small_train_file, tmp_path, "output.run_name=cut")
    run = tmp_path / "cut"
    expected_resume = {4: 2, 6: 5, 8: 6, 10: 8}  # the complete checkpoint before each cut save
    resume, seen = None, set()
    for step, phase in SAVE_FAULTS:
        monkeypatch.setenv("LLMFT_FAULT_SAVE", f"{step}:{phase}")
        with pytest.raises(Exception):  # every worker dies inside the save after `step`
            run_training(cfg, resume=resume)
        # What the crash left: one more folder that holds part of the save and does not count.
        partial = [p for p in run.glob("checkpoint_*") if p.is_dir() and not is_complete(p) and p not in seen]
        assert len(partial) == 1, partial
        seen.add(partial[0])
        state, found = problems(partial[0])
        present = {p.relative_to(partial[0]).as_posix() for p in partial[0].rglob("*") if p.is_file()}
        assert state["position"]["global_step"] == step and found, phase
        if phase == "before_shards":
            assert STATE_FILE in present and not any(name.startswith("deepspeed/") for name in present)
        elif phase in ("between_ranks", "before_manifest"):
            assert manifest_name(0) in present and manifest_name(1) not in present
            assert any("rank_1" in name for name in present) == (phase == "before_manifest")
        else:
            assert {manifest_name(0), manifest_name(1)} <= present
            assert any("optim_states.pt has" in problem for problem in found), found
        latest = find_checkpoints(run)[-1]  # the partial folders stay where they are
        assert read_state(latest)["position"]["global_step"] == expected_resume[step]
        # The losses so far, including this attempt's, are the uninterrupted run's.
        assert_same_losses(run, losses(reference), range(1, step + 1))
        resume = "latest"
    monkeypatch.delenv("LLMFT_FAULT_SAVE")
    run_training(cfg, resume="latest")
    assert_same_losses(run, losses(reference), range(1, 11))
    # Each `--resume latest` started right after the previous complete checkpoint.
    records = [json.loads(line) for line in (trace / "examples_rank0.jsonl").read_text().splitlines()]
    first_steps = [min(r["step"] for r in records if r["attempt"] == a)
                   for a in dict.fromkeys(r["attempt"] for r in records)]
    assert first_steps == [1, 3, 6, 7, 9]
    assert_each_example_once_per_epoch(trace, cfg)


def test_dead_workers_recover_and_train_each_example_once(reference, dropout_model_dir, small_train_file,
                                                          tmp_path, monkeypatch):
    trace = tmp_path / "trace"
    trace.mkdir()
    monkeypatch.setenv("LLMFT_FAULT_KILL_AT_STEP", "5:1,9:0")  # rank 1 in step 5, then rank 0 in step 9
    monkeypatch.setenv("LLMFT_FAULT_MARKER", str(tmp_path / "faults"))
    monkeypatch.setenv("LLMFT_TRACE_DIR", str(trace))
    cfg = config(dropout_model_dir, small_train_file, tmp_path, "output.run_name=recovered",
                 "training.max_failures=2")
    run_dir = Path(run_training(cfg))
    assert (tmp_path / "faults").read_text().splitlines() == ["kill 5:1", "kill 9:0"]  # both workers really died
    attempts = {json.loads(line)["attempt"] for line in (trace / "examples_rank0.jsonl").read_text().splitlines()}
    assert len(attempts) == 3  # two restarts of the worker group
    assert_same_losses(run_dir, losses(reference), range(1, 11))
    assert_each_example_once_per_epoch(trace, cfg)
    # The export (best = latest here) has exactly the trained model's logits.
    from transformers import AutoModelForCausalLM

    saved = torch.load(trace / "final_logits.pt")
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model").eval()
    with torch.no_grad():
        logits = model(input_ids=saved["input_ids"]).logits
    torch.testing.assert_close(logits, saved["logits"], rtol=1e-5, atol=1e-5)


def test_resume_refuses_another_zero_stage_or_a_broken_path(reference, dropout_model_dir, small_train_file,
                                                          tmp_path):
    # Another number of workers is fine (the states are re-partitioned; test_multinode_e2e.py),
    # another ZeRO stage is not: through --resume PATH and --resume latest alike, in seconds.
    checkpoint = find_checkpoints(reference)[-1]
    zero2 = config(dropout_model_dir, small_train_file, reference.parent, "output.run_name=straight",
                   "deepspeed.zero_stage=2")
    with pytest.raises(LlmftError, match="saved with ZeRO-3; this run has ZeRO-2"):
        run_training(zero2, resume=checkpoint)
    with pytest.raises(LlmftError, match="saved with ZeRO-3; this run has ZeRO-2"):
        run_training(zero2, resume="latest")
    one_worker = config(dropout_model_dir, small_train_file, tmp_path, "scaling.num_workers=1")
    with pytest.raises(LlmftError, match="does not exist"):
        run_training(one_worker, resume=str(tmp_path / "nowhere"))
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(LlmftError, match="not a complete llmft checkpoint"):
        run_training(one_worker, resume=str(broken))


def test_a_user_error_inside_a_worker_reaches_the_user_as_its_message(ray_session, dropout_model_dir,
                                                                      small_train_file, tmp_path):
    # The driver reads only config.json and the tokenizer; the weights are first read in the workers.
    model = tmp_path / "half-copied"
    shutil.copytree(dropout_model_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    with pytest.raises(LlmftError) as error:
        run_training(config(model, small_train_file, tmp_path, "output.run_name=bad-weights", "training.max_steps=1"))
    message = str(error.value)
    assert message.startswith(f"model.name_or_path = '{model}'") and "could not load the model" in message
    assert "Traceback" not in message and "\n" not in message


def test_tensorboard_and_mlflow_get_the_metrics_file_numbers(reference, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    expected = losses(reference)
    events = EventAccumulator(str(reference / "tensorboard"))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("train_loss")} == pytest.approx(expected, abs=1e-6)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads a folder store only when told to
    client = MlflowClient(str(reference.parent / "mlruns"))
    (run,) = client.search_runs(experiment_ids=[e.experiment_id for e in client.search_experiments()])
    assert run.info.run_name == reference.name and run.data.params["training.epochs"] == "2"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train_loss")}
    assert history == pytest.approx(expected, abs=1e-6)


def test_exported_model_continues_as_a_new_run(reference, small_train_file, tmp_path):
    exported = reference / "model"
    run_dir = Path(run_training(config(exported, small_train_file, tmp_path, "output.run_name=continued",
                                  "training.max_steps=2", "training.epochs=1")))
    first = losses(run_dir)[1]
    # It starts from the fine-tuned weights, not from scratch: its first loss is near the end of the first run.
    assert first < losses(reference)[1] - 0.5
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(run_dir / "model")) == len(AutoTokenizer.from_pretrained(exported))
