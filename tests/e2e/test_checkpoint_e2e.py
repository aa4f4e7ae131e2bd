"""Checkpoints, exact resume, worker-failure recovery and export, with real Ray + DeepSpeed.

What these catch: a resume that replays or skips data, or forgets the optimizer/scheduler state
(later losses would differ from the uninterrupted run); a recovery after a dead worker that
trains some examples twice or not at all; an export whose weights differ from the trained
model; resumes that cannot be exact (another ZeRO stage) slipping through.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from llmft.config import load_config
from llmft.data.samples import generate_rows
from llmft.errors import LlmftError
from llmft.train.driver import run_training
from llmft.train.logger import read_metrics

pytestmark = pytest.mark.e2e
from tests.support import REPO

NUM_EXAMPLES = 160


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def small_train_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "viggo-train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in generate_rows("viggo", "train")[:NUM_EXAMPLES]))
    return path


def config(model_dir, train_file, out, *overrides):
    return load_config(REPO / "configs/viggo/tiny-cpu.yaml", [
        f"model.name_or_path={model_dir}", f"output.dir={out}", f"data.train={train_file}", "data.valid=null",
        "training.max_steps=null", "training.epochs=2", "training.eval_every_steps=null",
        "training.checkpoint_every_steps=2", "training.warmup_steps=1", *overrides])


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in read_metrics(run_dir) if "train_loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(ray_session, tiny_model_dir, small_train_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return Path(run_training(config(tiny_model_dir, small_train_file, out, "output.run_name=straight")))


def test_stop_and_resume_gives_the_same_losses(uninterrupted, tiny_model_dir, small_train_file, tmp_path, monkeypatch):
    reference = losses(uninterrupted)
    assert len(reference) >= 8
    cfg = config(tiny_model_dir, small_train_file, tmp_path, "output.run_name=stopped")
    monkeypatch.setenv("LLMFT_FAULT_KILL_AT_STEP", "5")
    monkeypatch.setenv("LLMFT_FAULT_MARKER", str(tmp_path / "killed"))
    with pytest.raises(Exception):
        run_training(cfg)  # max_failures 0: the run stops at step 5, last checkpoint at step 4
    assert max(losses(tmp_path / "stopped")) >= 4
    run_training(cfg, resume="latest")
    resumed = losses(tmp_path / "stopped")
    assert sorted(resumed) == sorted(reference)
    for step in reference:
        assert resumed[step] == pytest.approx(reference[step], abs=1e-5), step


def test_dead_worker_recovers_and_trains_each_example_once(uninterrupted, tiny_model_dir, small_train_file,
                                                           tmp_path, monkeypatch):
    trace = tmp_path / "trace"
    trace.mkdir()
    monkeypatch.setenv("LLMFT_FAULT_KILL_AT_STEP", "5")
    monkeypatch.setenv("LLMFT_FAULT_MARKER", str(tmp_path / "killed"))
    monkeypatch.setenv("LLMFT_TRACE_DIR", str(trace))
    run_dir = Path(run_training(config(tiny_model_dir, small_train_file, tmp_path, "output.run_name=recovered",
                                       "training.max_failures=1")))
    assert (tmp_path / "killed").exists()  # the worker really died
    reference = losses(uninterrupted)
    recovered = losses(run_dir)
    assert sorted(recovered) == sorted(reference)  # the planned number of steps
    for step in reference:
        assert recovered[step] == pytest.approx(reference[step], abs=1e-5), step
    # The trace holds every attempt; the last record of each (step, rank) is what was kept.
    final: dict[tuple[int, int], dict] = {}
    for rank in (0, 1):
        for line in (trace / f"examples_rank{rank}.jsonl").read_text().splitlines():
            record = json.loads(line)
            final[(record["step"], rank)] = record
    for epoch in (0, 1):
        seen = Counter(i for r in final.values() if r["epoch"] == epoch for i in r["examples"])
        assert len(seen) == NUM_EXAMPLES and set(seen.values()) == {1}, epoch
    # The export (best = latest here) has exactly the trained model's logits.
    from transformers import AutoModelForCausalLM

    saved = torch.load(trace / "final_logits.pt")
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model").eval()
    with torch.no_grad():
        logits = model(input_ids=saved["input_ids"]).logits
    torch.testing.assert_close(logits, saved["logits"], rtol=1e-5, atol=1e-5)


def test_resume_refuses_another_zero_stage_or_a_broken_path(uninterrupted, tiny_model_dir, small_train_file, tmp_path):
    from llmft.checkpoint import find_checkpoints

    checkpoint = find_checkpoints(uninterrupted)[-1]
    # Another world size is fine (the states are re-partitioned; test_multinode_e2e.py), another stage is not.
    cfg = config(tiny_model_dir, small_train_file, tmp_path, "deepspeed.zero_stage=2")
    with pytest.raises(LlmftError, match="saved with ZeRO-3"):
        run_training(cfg, resume=str(checkpoint))
    with pytest.raises(LlmftError, match="does not exist"):
        run_training(cfg, resume=str(tmp_path / "nowhere"))
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(LlmftError, match="not a complete llmft checkpoint"):
        run_training(cfg, resume=str(broken))


def test_exported_model_continues_as_a_new_run(uninterrupted, small_train_file, tmp_path):
    exported = uninterrupted / "model"
    run_dir = Path(run_training(config(exported, small_train_file, tmp_path, "output.run_name=continued",
                                       "training.max_steps=2", "training.epochs=1")))
    first = losses(run_dir)[1]
    # It starts from the fine-tuned weights, not from scratch: its first loss is near the end of the first run.
    assert first < losses(uninterrupted)[1] - 0.5
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(run_dir / "model")) == len(AutoTokenizer.from_pretrained(exported))
