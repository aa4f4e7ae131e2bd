"""`llmft train CONFIG --smoke`: the smoke run keeps a config's DeepSpeed setup and maps only what
the machine lacks, and every shipped recipe maps onto a setup the e2e suite runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmft.config import load_config
from llmft.smoke import MAX_WORKERS, SMOKE_STEPS, plan_smoke, setup_of
from tests.support import REPO
from tests.support.recipes import recipes_by_setup, setup_key, shipped_recipes

OUT = Path("/tmp/smoke-plan")


def test_every_shipped_recipe_keeps_its_setup_and_maps_onto_a_smoke_tested_one():
    groups = recipes_by_setup()
    tested = set(groups)  # test_recipes_e2e smokes the first recipe of each group
    assert len(shipped_recipes()) == 9
    for path in shipped_recipes():
        cfg = load_config(path)
        smoke = plan_smoke(cfg, out_dir=OUT, cpus=2, gpus=0).config
        assert setup_of(smoke) == setup_of(cfg), path  # the smoke run takes the recipe's own code path
        assert setup_key(setup_of(smoke)) in tested
    setups = [setup_of(load_config(paths[0])) for paths in groups.values()]
    assert {(s["offload_optimizer"], s["offload_params"]) for s in setups} == {("cpu", "cpu"), ("cpu", "none")}
    assert all(s["dtype"] == "bfloat16" and s["gradient_checkpointing"] and s["zero_stage"] == 3
               and s["optimizer"] == "DeepSpeed AdamW (from its JSON)" for s in setups)


def test_a_gpu_recipe_maps_onto_cpu_workers_and_says_what_changed():
    cfg = load_config(REPO / "configs/sql/llama-2-70b.yaml")
    plan = plan_smoke(cfg, out_dir=OUT, cpus=2, gpus=0)
    smoke = plan.config
    assert smoke.scaling.use_gpu is False and smoke.scaling.num_workers == MAX_WORKERS
    assert smoke.training.micro_batch_size == cfg.training.micro_batch_size == 8
    assert smoke.global_batch_size == 2 * 8 and smoke.gradient_accumulation_steps == cfg.gradient_accumulation_steps
    assert smoke.training.max_steps == SMOKE_STEPS and smoke.training.checkpoint_every_steps == 2
    assert (smoke.data.train, smoke.data.valid) == ("sample:sql@train", "sample:sql@valid")
    assert (smoke.data.max_length, smoke.data.packing) == (cfg.data.max_length, cfg.data.packing)
    assert smoke.model.name_or_path == str(OUT / "tiny-model") and plan.like == "meta-llama/Llama-2-70b-hf"
    assert smoke.model.dtype == "bfloat16" and smoke.model.gradient_checkpointing
    assert smoke.output.dir == str(OUT)
    changed = " ".join(plan.changes)
    for key in ("model.name_or_path", "scaling.use_gpu", "scaling.num_workers", "training.global_batch_size",
                "data.train"):
        assert key in changed, key
    on_gpus = plan_smoke(cfg, out_dir=OUT, cpus=16, gpus=8).config
    assert on_gpus.scaling.use_gpu and on_gpus.scaling.num_workers == MAX_WORKERS


def test_settings_the_machine_lacks_are_mapped_and_the_rest_kept(tiny_model_dir, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "a", "completion": "b"}\n')
    cfg = load_config(REPO / "configs/viggo/tiny-cpu.yaml", [
        f"model.name_or_path={tiny_model_dir}", "model.attn_implementation=flash_attention_2",
        "model.dtype=auto", "scaling.use_gpu=true", "scaling.num_workers=1", "training.global_batch_size=12",
        "training.micro_batch_size=4", "data.task=prompt_completion", f"data.train={train}", "data.valid=null",
        "data.test=null", "deepspeed.offload_optimizer=nvme", "deepspeed.nvme_path=/mnt/nvme",
        "output.dir=s3://bucket/runs", "logging.mlflow_tracking_uri=http://mlflow:5000"])
    plan = plan_smoke(cfg, out_dir=tmp_path / "smoke", cpus=1, gpus=0)
    smoke = plan.config
    assert smoke.model.attn_implementation == "sdpa" and smoke.model.dtype == "bfloat16"
    assert smoke.scaling.num_workers == 1 and smoke.global_batch_size == 4 * 2  # accumulation 3 -> 2
    assert smoke.data.train == str(train)  # local data is kept
    assert smoke.deepspeed.nvme_path == str(tmp_path / "smoke" / "nvme")
    assert smoke.deepspeed.offload_optimizer == "nvme"
    assert smoke.output.dir == str(tmp_path / "smoke") and smoke.logging.mlflow_tracking_uri is None
    assert plan.tokenizer_from == str(tiny_model_dir)  # the model's own tokenizer, found on disk
    assert [change.split(":")[0] for change in plan.changes] == [
        "model.name_or_path", "model.dtype", "model.attn_implementation", "scaling.use_gpu",
        "training.global_batch_size", "training", "deepspeed.nvme_path", "output.dir", "logging.mlflow_tracking_uri"]


def test_smoke_and_resume_together_is_a_user_error(tmp_path):
    from click.testing import CliRunner

    from llmft.cli import main

    result = CliRunner().invoke(main, ["train", str(REPO / "configs/viggo/llama-2-7b.yaml"), "--smoke",
                                       "--resume", "latest"])
    assert result.exit_code == 2 and "--smoke" in result.output


@pytest.mark.parametrize("override, key", [("deepspeed.offload_params=none", "offload_params"),
                                           ("model.gradient_checkpointing=false", "gradient_checkpointing")])
def test_setup_of_tells_setups_apart(override, key):
    base = load_config(REPO / "configs/viggo/llama-2-7b.yaml")
    other = load_config(REPO / "configs/viggo/llama-2-7b.yaml", [override])
    assert setup_of(base)[key] != setup_of(other)[key]
