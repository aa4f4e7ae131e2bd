"""`llmft doctor`: a report of this (CPU-only) node, and what a config needs from it, with exit 1
and the list when something needed is missing."""

from __future__ import annotations

import json

from click.testing import CliRunner

from llmft.cli import main
from tests.support import REPO, closed_port


def doctor(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["doctor", "--json", *args])
    return result.exit_code, json.loads(result.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"]}


def test_report_of_a_cpu_node_needs_nothing(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, report = doctor()
    checks = by_name(report)
    assert code == 0 and report["missing"] == []
    for name in ("torch", "CUDA", "NCCL", "transformers", "deepspeed", "ray", "flash-attention 2", "RAM", "GPUs",
                 "DeepSpeed op cpu_adam", "cluster"):
        assert name in checks, name
    assert checks["GPUs"]["detail"] == "none visible"
    assert checks["DeepSpeed op cpu_adam"]["status"] in ("ok", "warn")  # built, or buildable here


def test_a_gpu_recipe_lists_what_this_node_lacks(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, report = doctor(str(REPO / "configs/viggo/llama-2-7b.yaml"))
    checks = by_name(report)
    assert code == 1
    assert {"GPUs", "NCCL", "bf16 GPUs"} <= set(report["missing"])
    assert checks["CPU Adam"]["status"] == "ok"  # offload needs it; this node can build it
    assert "7.4 GB per GPU" in checks["GPU memory"]["detail"]  # llmft plan's figure for 7B on 16 GPUs


def test_a_cpu_config_runs_here(monkeypatch, tiny_model_dir):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, report = doctor(str(REPO / "configs/viggo/tiny-cpu.yaml"), f"model.name_or_path={tiny_model_dir}",
                          "deepspeed.offload_optimizer=cpu", "model.dtype=bfloat16")
    checks = by_name(report)
    assert code == 0, report["missing"]
    assert checks["bf16 on CPU"]["status"] == "warn" and checks["CPU Adam"]["status"] == "ok"


def test_an_unreachable_ray_cluster_is_missing():
    code, report = doctor("--address", f"127.0.0.1:{closed_port()}")
    assert code == 1 and report["missing"] == ["cluster"]
    assert "does not answer" in by_name(report)["cluster"]["detail"]
