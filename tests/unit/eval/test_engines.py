"""Choosing the eval engine before Ray starts: auto from the eval plan, and engines that cannot run
here refused with a clear message (exit 2)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llmft.cli import main
from llmft.config import load_config
from llmft.errors import LlmftError
from llmft.eval.engines import check_runs_here, choose_engine
from tests.support import REPO


def tiny(model_dir, *overrides):
    return load_config(REPO / "configs/viggo/tiny-cpu.yaml", [f"model.name_or_path={model_dir}", *overrides])


def test_auto_on_cpu_workers_picks_replicas_and_knows_the_size(tiny_model_dir):
    choice = choose_engine(tiny(tiny_model_dir), str(tiny_model_dir), seq_len=200)
    assert (choice.name, choice.requested, choice.parameters) == ("replicas", "auto", 356_672)
    assert choice.plan["auto"] == "replicas"


def test_an_explicit_engine_is_kept(tiny_model_dir):
    assert choose_engine(tiny(tiny_model_dir, "eval.engine=zero3"), str(tiny_model_dir), seq_len=200).name == "zero3"


def test_auto_refuses_when_no_engine_fits(tiny_model_dir):
    with pytest.raises(LlmftError, match="No eval engine fits .*replicas .* GB.*llmft plan CONFIG --eval"):
        choose_engine(tiny(tiny_model_dir, "eval.device_memory_gb=0.5"), str(tiny_model_dir), seq_len=200)


def test_a_model_the_planner_cannot_size_falls_back_to_replicas(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_layer": 2}))
    choice = choose_engine(tiny(tmp_path), str(tmp_path), seq_len=200)
    assert (choice.name, choice.plan, choice.parameters) == ("replicas", None, None)
    assert "using replicas" in capsys.readouterr().err


def test_vllm_needs_gpus(tiny_model_dir):
    with pytest.raises(LlmftError, match="vllm runs on GPUs only.*--engine zero3"):
        check_runs_here("vllm", tiny(tiny_model_dir))


def test_vllm_needs_vllm_installed():
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(LlmftError, match="needs vLLM, which is not installed.*llmft\\[vllm\\]"):
        check_runs_here("vllm", load_config(REPO / "configs/viggo/llama-2-13b.yaml"))


def test_cli_vllm_on_cpu_exits_2_before_ray_starts(tiny_model_dir, tmp_path):
    result = CliRunner().invoke(main, ["eval", str(REPO / "configs/viggo/tiny-cpu.yaml"),
                                       f"model.name_or_path={tiny_model_dir}", "--engine", "vllm", "--limit", "2",
                                       "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 2 and "GPUs only" in result.output
    assert not (tmp_path / "r.json").exists()
