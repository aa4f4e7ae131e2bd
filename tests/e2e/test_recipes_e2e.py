"""The shipped recipes' own code path, run here: bf16, gradient checkpointing, ZeRO-3 offload and
DeepSpeed's CPU Adam, through `llmft train CONFIG --smoke`.

- One smoke run per distinct DeepSpeed setup of the 9 shipped Llama-2 configs (ZeRO-3 offloading
  parameters and optimizer: 7B/13B; ZeRO-3 offloading the optimizer: 70B), each a real
  2-worker Ray Train run of a tiny Llama in bf16. Catches: a setup that crashes on its first
  step, DeepSpeed not building CPU Adam (or building a torch AdamW instead), a resume whose
  losses or weights drift from the uninterrupted run, an export plain transformers cannot load,
  and a weight-decay rule that reaches DeepSpeed's optimizer without its no-decay group.
  `tests/unit/test_smoke.py` checks that every shipped config maps onto one of these setups.
- The weight-decay rule on the offload path, observed in the weights: one CPU Adam step of a
  Qwen2 model (it has attention biases) under ZeRO-3 with parameter and optimizer offload.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmft.config import load_config
from llmft.train.logger import read_metrics
from tests.support import REPO
from tests.support.recipes import recipes_by_setup

pytestmark = pytest.mark.e2e

SETUPS = recipes_by_setup()
WEIGHT_DECAY = 0.1


@pytest.mark.parametrize("recipe", [paths[0] for paths in SETUPS.values()], ids=lambda p: str(p.relative_to(REPO)))
def test_smoke_run_of_each_recipe_setup(recipe: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llmft.cli", "train", str(recipe), "--smoke", f"output.dir={tmp_path}",
         f"training.weight_decay={WEIGHT_DECAY}", f"data.cache_dir={tmp_path / 'cache'}"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]
    (smoke_dir,) = tmp_path.glob("smoke-*")
    report = json.loads((smoke_dir / "smoke_report.json").read_text())
    assert report["checks"] and all(report["checks"].values()), report["checks"]

    # The engine DeepSpeed built in the workers, as the config asks (not as llmft planned it).
    engine = json.loads((smoke_dir / "train" / "engine.json").read_text())
    recipe_cfg = load_config(recipe)
    assert engine["optimizer"] == "DeepSpeedCPUAdam"
    assert engine["weight_decay_per_group"] == [WEIGHT_DECAY, 0.0]
    assert engine["zero_stage"] == 3 and engine["world_size"] == 2
    assert engine["offload_optimizer"] == recipe_cfg.deepspeed.offload_optimizer
    assert engine["offload_params"] == recipe_cfg.deepspeed.offload_params
    assert engine["precision"] == engine["parameter_dtype"] == "bfloat16"
    assert engine["gradient_checkpointing"] is True

    # Resume: the resumed run's losses are the uninterrupted run's (read from both metrics files).
    plain = {r["step"]: r["train_loss"] for r in read_metrics(smoke_dir / "train") if "train_loss" in r}
    (resumed_dir,) = smoke_dir.glob("train-resumed-*")
    resumed = {r["step"]: r["train_loss"] for r in read_metrics(resumed_dir) if "train_loss" in r}
    assert sorted(plain) == [1, 2, 3, 4] and sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(plain[step], rel=1e-5), (step, plain, resumed)

    # The export is a model plain transformers loads, in the training dtype, with the task's tokens.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmft.tasks import get_task

    model = AutoModelForCausalLM.from_pretrained(smoke_dir / "export-resumed")
    tokenizer = AutoTokenizer.from_pretrained(smoke_dir / "export-resumed")
    stop = get_task(recipe_cfg.data.task).stop_token
    assert model.dtype == torch.bfloat16 and stop in tokenizer.get_vocab()
    ids = tokenizer(f"Is it fun? {stop}", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits.float()).all()


def test_no_weight_decay_on_norms_and_biases_with_offloaded_cpu_adam(tmp_path, single_process_group) -> None:
    """With Adam's first step every updated element moves by exactly lr (m/sqrt(v) = sign(g)), and
    AdamW's decay adds lr x weight_decay x value. So norms and biases must move by at most lr, and
    matrices by lr once their decay is taken out: observed in the weights, on the optimizer
    DeepSpeed builds from its JSON under ZeRO-3 with parameters and optimizer offloaded."""
    import deepspeed

    from llmft.config import Config
    from llmft.models.loading import load_model
    from llmft.models.tiny import make_tiny_model
    from llmft.models.tokenizer import load_task_tokenizer
    from llmft.train.deepspeed import build_deepspeed_config
    from llmft.train.optim import parameter_groups

    lr, decay = 1e-2, 0.5
    model_dir = make_tiny_model(tmp_path / "qwen2", "qwen2")
    cfg = Config.model_validate({
        "model": {"name_or_path": str(model_dir), "dtype": "float32", "gradient_checkpointing": True},
        "data": {"task": "viggo", "train": "sample:viggo@train"},
        "training": {"micro_batch_size": 2, "global_batch_size": 2, "learning_rate": lr, "weight_decay": decay,
                     "adam_eps": 1e-12},
        "deepspeed": {"zero_stage": 3, "offload_optimizer": "cpu", "offload_params": "cpu"},
        "scaling": {"num_workers": 1}})
    tokenizer = load_task_tokenizer(cfg)
    ds_config = build_deepspeed_config(cfg, hidden_size=64)
    assert ds_config["optimizer"]["type"] == "AdamW"  # DeepSpeed builds the optimizer, not llmft
    model = load_model(cfg, tokenizer, ds_config)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=parameter_groups(model, decay),
                                      config=ds_config)
    assert type(engine.basic_optimizer).__name__ == "DeepSpeedCPUAdam"

    def weights() -> dict[str, torch.Tensor]:
        params = dict(engine.module.named_parameters())
        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {name: p.detach().clone() for name, p in params.items()}

    engine.train()
    before = weights()
    ids = tokenizer(["<START_TEXT>A fun game.<END_TEXT><START_MR>inform(rating[good])<END_MR>"] * 2,
                    return_tensors="pt")["input_ids"]
    loss = engine(input_ids=ids, labels=ids, use_cache=False).loss
    engine.backward(loss)
    engine.step()
    after = weights()

    vectors = [name for name in before if before[name].dim() == 1]
    assert any(name.endswith(".bias") for name in vectors) and any("norm" in name for name in vectors)
    for name in vectors:
        moved = (after[name] - before[name]).abs().max().item()
        assert moved <= lr * (1 + 1e-4), f"{name} moved {moved}: weight decay reached a norm or bias"
    matrix = "model.layers.0.mlp.up_proj.weight"
    moved = after[matrix] - before[matrix]
    assert (moved + lr * decay * before[matrix]).abs().max().item() <= lr * (1 + 1e-4)
    assert moved.abs().max().item() > lr * (1 + 1e-3)  # the matrices' decay is there
