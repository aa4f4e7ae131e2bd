"""`llmft train` end to end: real Ray Train workers, real DeepSpeed ZeRO, a tiny Llama on CPU.

What these catch: a loss that does not fall (broken masking, labels or optimizer wiring); a loss
normalisation that depends on how the global batch is split over workers and accumulation
steps; ZeRO stages that disagree; special tokens missing from the run's tokenizer; a metrics
file or export that is not written; user errors that hang or print tracebacks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmft.config import load_config
from llmft.train.driver import run_training
from llmft.train.logger import read_metrics

pytestmark = pytest.mark.e2e
from tests.support import REPO


def tiny_config(model_dir: Path, out: Path, *overrides: str):
    return load_config(REPO / "configs/viggo/tiny-cpu.yaml",
                       [f"model.name_or_path={model_dir}", f"output.dir={out}", *overrides])


def test_cli_trains_tiny_viggo_with_two_workers_and_zero3(tiny_model_dir, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "llmft.cli", "train", "configs/viggo/tiny-cpu.yaml",
         f"model.name_or_path={tiny_model_dir}", f"output.dir={tmp_path}", "output.run_name=run",
         "training.max_steps=24"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    # Training's collectives never use DeepSpeed's shm comm op: no worker builds or loads it.
    assert "deepspeed_shm_comm" not in done.stdout + done.stderr
    # The workers ran with the CPU malloc settings (rank 0 records what its process has).
    from llmft.train.allocator import CPU_WORKER_MALLOC

    assert json.loads((tmp_path / "run" / "engine.json").read_text())["malloc"] == CPU_WORKER_MALLOC
    records = read_metrics(tmp_path / "run")
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < 0.75 * sum(losses[:4]) / 4, losses
    assert any("valid_loss" in r for r in records)
    assert any("valid_gen_exact_match" in r for r in records)  # generation eval during training
    exported = tmp_path / "run" / "model"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exported)
    assert "<END_MR>" in tokenizer.get_vocab() or any("END" in t for t in tokenizer.additional_special_tokens)
    generation = json.loads((exported / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids(
        json.loads((exported / "llmft_export.json").read_text())["stop_token"])


def _metrics_and_weights(run_dir: Path):
    from safetensors.torch import load_file

    records = [r for r in read_metrics(run_dir) if "train_loss" in r]
    weights = {}
    for shard in sorted((run_dir / "model").glob("*.safetensors")):
        weights.update(load_file(shard))
    return [r["train_loss"] for r in records], [r.get("grad_norm") for r in records], weights


def test_batch_split_and_zero_stage_do_not_change_the_training(ray_session, tiny_model_dir, tmp_path):
    """Losses, gradient norms before clipping, and the exported weights (ZeRO-3 and ZeRO-2
    checkpoints) agree however the global batch is split. AdamW with clipping hides a constant
    factor on the gradient in the losses and weights; the gradient norm shows it."""
    common = ["training.max_steps=6", "training.global_batch_size=8", "training.eval_every_steps=null",
              "training.checkpoint_every_steps=null", "training.generation_eval_every_steps=null", "data.valid=null",
              "logging.progress_bar=false"]
    runs = {
        "2x2x2-zero3": ["scaling.num_workers=2", "training.micro_batch_size=2", "deepspeed.zero_stage=3"],
        "1x8x1-zero3": ["scaling.num_workers=1", "training.micro_batch_size=8", "deepspeed.zero_stage=3"],
        "2x2x2-zero2": ["scaling.num_workers=2", "training.micro_batch_size=2", "deepspeed.zero_stage=2"],
    }
    results = {}
    for name, extra in runs.items():
        cfg = tiny_config(tiny_model_dir, tmp_path, f"output.run_name={name}", *common, *extra)
        results[name] = _metrics_and_weights(Path(run_training(cfg)))
    base_losses, base_norms, base_weights = results["2x2x2-zero3"]
    assert len(base_losses) == 6 and all(norm is not None and norm > 0 for norm in base_norms)
    for name, (losses, norms, weights) in results.items():
        assert losses == pytest.approx(base_losses, rel=1e-4, abs=1e-5), name
        assert norms == pytest.approx(base_norms, rel=1e-4), name
        assert weights.keys() == base_weights.keys()
        for key in base_weights:
            torch.testing.assert_close(weights[key], base_weights[key], rtol=1e-3, atol=1e-4, msg=f"{name}: {key}")
    # The embedded cluster (one machine, gone with the command) starts no PreemptionWatcher actor.
    import ray
    from ray.util.state import list_actors

    gcs = ray.get_runtime_context().gcs_address  # this cluster, not another Ray on the machine
    started = {actor.class_name for actor in list_actors(address=gcs, limit=10_000)}
    assert "TrainController" in started and "PreemptionWatcher" not in started, started


def test_plain_sgd_moves_the_weights_the_same_for_any_batch_split(ray_session, tiny_model_dir, tmp_path):
    """Plain SGD without clipping, named in a DeepSpeed JSON (DeepSpeed builds `torch.optim.SGD`
    from it): the update is lr x gradient, so a gradient off by a constant factor (e.g. the loss
    not scaled by the world size) moves the weights by that factor. Also exports a ZeRO-0
    checkpoint (the 1-worker run), compared with the 2-worker ZeRO-3 one."""
    from safetensors.torch import load_file

    ds_json = tmp_path / "sgd.json"
    ds_json.write_text(json.dumps({"optimizer": {"type": "SGD", "params": {"lr": 0.5}},
                                   "zero_optimization": {"stage": "auto"}}))
    common = ["training.max_steps=3", "training.global_batch_size=8", "training.eval_every_steps=null",
              "training.checkpoint_every_steps=null", "training.generation_eval_every_steps=null", "data.valid=null",
              "training.max_grad_norm=null", "training.lr_schedule=constant", "training.warmup_steps=0",
              f"deepspeed.config_file={ds_json}", "logging.progress_bar=false"]
    runs = {"2x2x2-zero3": ["scaling.num_workers=2", "training.micro_batch_size=2", "deepspeed.zero_stage=3"],
            "1x8x1-zero0": ["scaling.num_workers=1", "training.micro_batch_size=8", "deepspeed.zero_stage=0"]}
    initial = load_file(tiny_model_dir / "model.safetensors")
    moved = {}
    for name, extra in runs.items():
        _, _, weights = _metrics_and_weights(Path(run_training(
            tiny_config(tiny_model_dir, tmp_path, f"output.run_name={name}", *common, *extra))))
        # The original rows only: new task-token rows start at a mean that is not in `initial`.
        moved[name] = {key: weights[key][:value.shape[0]] - value for key, value in initial.items()}
    two, one = moved["2x2x2-zero3"], moved["1x8x1-zero0"]
    assert two["model.embed_tokens.weight"].abs().max() > 1e-3  # the steps really moved the weights
    for key in two:
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=1e-6, msg=key)


def test_user_errors_fail_fast(tiny_model_dir, tmp_path):
    def run(*overrides):
        return subprocess.run([sys.executable, "-m", "llmft.cli", "train", "configs/viggo/tiny-cpu.yaml",
                               f"output.dir={tmp_path}", *overrides],
                              cwd=REPO, capture_output=True, text=True, timeout=300)

    missing = run(f"model.name_or_path={tmp_path / 'no-such-model'}")
    assert missing.returncode == 2 and "model.name_or_path" in missing.stderr and "Traceback" not in missing.stderr
    too_many = run(f"model.name_or_path={tiny_model_dir}", "scaling.num_workers=16", "training.global_batch_size=64")
    assert too_many.returncode == 2 and "cannot place" in too_many.stderr, too_many.stderr[-2000:]
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({"train_micro_batch_size_per_gpu": 3, "zero_optimization": {"stage": 3}}))
    contradiction = run(f"model.name_or_path={tiny_model_dir}", f"deepspeed.config_file={ds_json}")
    assert contradiction.returncode == 2 and "train_micro_batch_size_per_gpu" in contradiction.stderr

