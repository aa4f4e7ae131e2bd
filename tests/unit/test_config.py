"""The config schema: shipped configs validate; each kind of bad input gets a precise message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmft.config import load_config, resolve_auto
from llmft.errors import LlmftError
from tests.support import REPO

SHIPPED = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.name != "recipe-llama-2.yaml"
                 and p.name != "base.yaml" and "cluster" not in p.parts)

MINIMAL = """
model: {name_or_path: some/model}
data: {task: viggo, train: sample:viggo@train}
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.global_batch_size % (cfg.world_size * cfg.training.micro_batch_size) == 0


def test_reference_recipe_values():
    cfg = load_config(REPO / "configs/viggo/llama-2-7b.yaml")
    assert (cfg.world_size, cfg.training.micro_batch_size, cfg.gradient_accumulation_steps) == (16, 16, 1)
    assert cfg.training.learning_rate == 5e-6 and cfg.data.max_length == 512 and cfg.num_epochs == 10
    assert (cfg.deepspeed.zero_stage, cfg.deepspeed.offload_optimizer, cfg.deepspeed.offload_params) == (3, "cpu", "cpu")
    big = load_config(REPO / "configs/gsm8k/llama-2-70b.yaml")
    assert (big.world_size, big.training.micro_batch_size, big.deepspeed.offload_params) == (32, 8, "none")


def test_unknown_key_suggests(tmp_path):
    path = write(tmp_path, MINIMAL + "training: {learning_rat: 1.0e-5}\n")
    with pytest.raises(LlmftError) as err:
        load_config(path)
    assert "training.learning_rat" in str(err.value) and "training.learning_rate" in str(err.value)
    assert str(path) in str(err.value)


def test_type_and_range_errors_name_key_and_file(tmp_path):
    path = write(tmp_path, MINIMAL + "training: {micro_batch_size: many}\n")
    with pytest.raises(LlmftError, match=r"training\.micro_batch_size"):
        load_config(path)
    path = write(tmp_path, MINIMAL + "training: {learning_rate: -1}\n")
    with pytest.raises(LlmftError, match=r"c\.yaml.*training\.learning_rate"):
        load_config(path)


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    path = write(tmp_path, "model:\n  name_or_path: x\n data: [\n")
    with pytest.raises(LlmftError, match=r"line 3, column \d+"):
        load_config(path)


def test_base_inheritance_and_origin(tmp_path):
    write(tmp_path, MINIMAL + "training: {learning_rate: 1.0e-4}\n", "base.yaml")
    child = write(tmp_path, "base: base.yaml\ntraining: {micro_batch_size: 2, global_batch_size: 4}\n", "child.yaml")
    cfg = load_config(child)
    assert cfg.training.learning_rate == 1e-4 and cfg.training.micro_batch_size == 2
    bad = write(tmp_path, "base: base.yaml\ntraining: {warmup_ratio: 3}\n", "bad.yaml")
    with pytest.raises(LlmftError, match="bad.yaml"):
        load_config(bad)


def test_missing_base_and_cycle(tmp_path):
    path = write(tmp_path, "base: nowhere.yaml\n")
    with pytest.raises(LlmftError, match="nowhere.yaml"):
        load_config(path)
    write(tmp_path, "base: b.yaml\n", "a.yaml")
    write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(LlmftError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_cross_field_checks(tmp_path):
    path = write(tmp_path, MINIMAL + "scaling: {num_workers: 3}\ntraining: {micro_batch_size: 2, global_batch_size: 8}\n")
    with pytest.raises(LlmftError, match="multiple of"):
        load_config(path)
    path = write(tmp_path, MINIMAL + "deepspeed: {zero_stage: 2, offload_params: cpu}\n")
    with pytest.raises(LlmftError, match="offload_params needs"):
        load_config(path)
    path = write(tmp_path, MINIMAL + "deepspeed: {zero_stage: 0, offload_optimizer: cpu}\n")
    with pytest.raises(LlmftError, match="offload_optimizer needs"):
        load_config(path)


def test_overrides(tmp_path):
    path = write(tmp_path, MINIMAL)
    cfg = load_config(path, ["training.learning_rate=2e-5", "scaling.num_workers=2", "training.global_batch_size=4"])
    assert cfg.training.learning_rate == 2e-5 and cfg.world_size == 2
    with pytest.raises(LlmftError, match="command line"):
        load_config(path, ["training.epochs=zero"])
    with pytest.raises(LlmftError, match="key.sub=value"):
        load_config(path, ["training.epochs"])


def test_auto_values_follow_openai_defaults(tmp_path):
    path = write(tmp_path, MINIMAL + "training: {epochs: auto, global_batch_size: auto, micro_batch_size: 2}\nscaling: {num_workers: 2}\n")
    cfg = load_config(path)
    assert resolve_auto(cfg, 1000).training.global_batch_size == 4      # 0.2% = 2 -> multiple of 2x2
    assert resolve_auto(cfg, 10).training.global_batch_size == 4        # at least 1 -> 4
    assert resolve_auto(cfg, 10**6).training.global_batch_size == 256   # capped at 256
    assert resolve_auto(cfg, 1000).num_epochs == 4


def test_elastic_workers_keep_one_global_batch_at_every_size(tmp_path):
    path = write(tmp_path, MINIMAL + "scaling: {num_workers: [2, 4]}\ntraining: {micro_batch_size: 2, global_batch_size: 24}\n")
    cfg = load_config(path)
    assert cfg.scaling.num_workers == (2, 4) and cfg.world_sizes == [2, 3, 4] and cfg.world_size == 4
    assert [cfg.accumulation_steps(w) for w in cfg.world_sizes] == [6, 4, 3]
    # 16 splits over 2 and 4 workers but not over 3: every size in the range counts.
    with pytest.raises(LlmftError, match=r"every worker count.*i\.e\. of 24"):
        load_config(path, ["training.global_batch_size=16"])
    with pytest.raises(LlmftError, match="1 <= min <= max"):
        load_config(path, ["scaling.num_workers=[3,2]"])
    auto = load_config(path, ["training.global_batch_size=auto"])
    assert resolve_auto(auto, 1000).training.global_batch_size == 24  # 0.2% = 2, rounded up to lcm(4, 6, 8)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmft.cli", *args], capture_output=True, text=True, cwd=REPO)


def test_cli_validate_ok_and_json():
    done = run_cli("validate", "configs/sql/llama-2-13b.yaml", "--json")
    assert done.returncode == 0, done.stderr
    import json

    report = json.loads(done.stdout)
    assert report["derived"]["gradient_accumulation_steps"] == 1
    assert report["deepspeed"]["zero_optimization"]["offload_param"]["device"] == "cpu"


def test_cli_user_error_exit_2_without_traceback(tmp_path):
    path = write(tmp_path, MINIMAL + "trainingg: {}\n")
    done = run_cli("validate", str(path))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "did you mean" in " ".join(done.stderr.lower().split())
