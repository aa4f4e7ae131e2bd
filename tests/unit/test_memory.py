"""`llmft plan`: per-GPU memory against DeepSpeed's estimators, the shipped configs fitting on 24 GB,
and the command's output."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llmft.cli import main
from llmft.config import load_config
from llmft.memory import GB, activation_bytes, estimate, eval_estimate, run_plan
from llmft.models.architecture import (
    architecture,
    load_model_config,
)
from llmft.train.loss import CHUNK_LOGITS
from tests.support import MODEL_CONFIG_FIXTURES, REPO, fixture_model_config

SIZES = ("7b", "13b", "70b")

# Our model-state figure on the GPU may differ from DeepSpeed's estimator by this much. Ours adds
# the communication and prefetch buckets (<= 0.25 GB with llmft's model-sized buckets) and counts
# the step's fp32 gradients per ZeRO-3 sub-group where DeepSpeed counts them whole (up to 11%).
RELATIVE_TOLERANCE = 0.12
ABSOLUTE_TOLERANCE_GB = 0.5


def shipped(size: str, overrides: tuple[str, ...] = ()):
    return load_config(REPO / "configs" / "viggo" / f"llama-2-{size}.yaml", list(overrides))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("stage, offload_optimizer, offload_params", [
    (2, "none", "none"), (2, "cpu", "none"), (3, "none", "none"), (3, "cpu", "none"), (3, "cpu", "cpu"),
])
def test_model_states_agree_with_deepspeeds_estimator(size, stage, offload_optimizer, offload_params):
    cfg = shipped(size, (f"deepspeed.zero_stage={stage}", f"deepspeed.offload_optimizer={offload_optimizer}",
                         f"deepspeed.offload_params={offload_params}"))
    report = estimate(load_model_config(cfg.model.name_or_path)[0], cfg, gpu_memory_gb=24)
    ds = report["deepspeed_estimate"]
    assert ds["function"].endswith(f"estimate_zero{stage}_model_states_mem_needs")
    ours, theirs = ds["ours_gpu_model_states_gb"], ds["gpu_model_states_gb"]
    assert abs(ours - theirs) <= max(RELATIVE_TOLERANCE * theirs, ABSOLUTE_TOLERANCE_GB), (ours, theirs)
    if stage == 3 and offload_optimizer == "cpu":  # DeepSpeed's CPU figure carries a 1.5x buffer factor
        assert report["cpu_memory_per_node_gb"] == pytest.approx(ds["cpu_per_node_gb"] / 1.5, rel=0.15)


@pytest.mark.parametrize("task", ["viggo", "sql", "gsm8k"])
@pytest.mark.parametrize("size", SIZES)
def test_shipped_configs_fit_on_24_gb_a10g(task, size):
    cfg = load_config(REPO / "configs" / task / f"llama-2-{size}.yaml")
    report = estimate(load_model_config(cfg.model.name_or_path)[0], cfg, gpu_memory_gb=24)
    assert report["fits"], report["gpu_total_gb"]
    assert report["min_gpus"] <= cfg.scaling.num_workers
    # Sanity: the checkpointed activations are a real share of the total, not rounding noise.
    assert 2 < report["activations_gb"]["with_checkpointing"] < report["gpu_total_gb"]


def test_70b_on_one_gpu_without_offload_does_not_fit_and_says_how_many_gpus(capsys):
    cfg = shipped("70b", ("scaling.num_workers=1", "training.global_batch_size=8",
                          "deepspeed.offload_optimizer=none"))
    report = estimate(load_model_config(cfg.model.name_or_path)[0], cfg, gpu_memory_gb=24)
    assert not report["fits"]
    assert report["gpu_total_gb"] > 1000  # 16 bytes x 69B parameters on one GPU
    # ZeRO-3 divides ~16 bytes/param over the GPUs: 69e9 * 16 / 2**30 / 24 GB is about 43, plus activations.
    assert 43 < report["min_gpus"] < 200
    assert report["at_min_gpus"]["gpu_total_gb"] <= 24
    run_plan(cfg, as_json=False, gpu_memory_gb=24)
    out = capsys.readouterr().out
    assert "Does not fit" in out and str(report["min_gpus"]) in out


def test_zero_stages_shard_more_and_offload_moves_states_off_the_gpu():
    model = load_model_config("meta-llama/Llama-2-7b-hf")[0]
    gpu = {}
    for stage in (0, 1, 2, 3):
        cfg = shipped("7b", (f"deepspeed.zero_stage={stage}", "deepspeed.offload_optimizer=none",
                             "deepspeed.offload_params=none"))
        gpu[stage] = estimate(model, cfg, 24)["gpu_model_states_gb"]
    assert gpu[0] > gpu[1] > gpu[2] > gpu[3]
    # Stage 0 keeps 2 + 2 + 4 + 12 bytes per parameter on every GPU.
    assert gpu[0] == pytest.approx(20 * 6_738_415_616 / GB, rel=1e-6)
    offloaded = estimate(model, shipped("7b"), 24)
    assert offloaded["gpu_model_states_gb"] < 1
    assert offloaded["offloaded_per_gpu_gb"]["cpu"] == pytest.approx(20 * 6_738_415_616 / 16 / GB, rel=1e-6)


def test_activations_follow_the_korthikanti_method():
    arch = architecture(fixture_model_config("llama-2-7b"))
    s, b, h, a = 512, 1, 4096, 32
    without = activation_bytes(arch, b, s, checkpointing=False)
    with_ckpt = activation_bytes(arch, b, s, checkpointing=True)
    # The chunked loss holds a fixed amount whatever the batch: one chunk of fp32 logits and its
    # softmax, and the output projection's gradient (fp32 sum plus a 16-bit copy).
    loss = 2 * 4 * CHUNK_LOGITS + 32000 * h * (4 + 2)
    assert with_ckpt - loss < (without - loss) / 4
    assert activation_bytes(arch, 2 * b, s, checkpointing=False) - loss == pytest.approx(2 * (without - loss), rel=1e-6)
    assert activation_bytes(arch, b, s, checkpointing=False, attn_implementation="eager") > without
    head = 8 * s * b * h + loss
    gpt_layers = 32 * s * b * h * (34 + 5 * a * s / h)  # Korthikanti et al. 2022, GPT layer
    assert 0.6 < (without - head) / gpt_layers < 1.4
    fp32_loss = 2 * 4 * CHUNK_LOGITS + 32000 * h * (4 + 4)
    assert activation_bytes(arch, b, s, checkpointing=False, bytes_per_value=4) - fp32_loss == pytest.approx(
        2 * (without - loss), rel=1e-6)


def test_cli_json_output_with_a_local_model_folder():
    result = CliRunner().invoke(main, [
        "plan", str(REPO / "configs" / "viggo" / "tiny-cpu.yaml"), f"model.name_or_path={MODEL_CONFIG_FIXTURES / 'smollm2-135m'}",
        "--json", "--gpu-memory-gb", "16"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"]["parameters"] == pytest.approx(134.5e6, rel=0.01)
    assert report["setup"]["dtype"] == "float32" and report["gpu_memory_gb"] == 16
    assert report["fits"]


def test_cli_reports_an_unreadable_model_as_a_user_error():
    result = CliRunner().invoke(main, [
        "plan", str(REPO / "configs" / "viggo" / "tiny-cpu.yaml"), "model.name_or_path=no-such-folder/nested/model"])
    assert result.exit_code == 2
    assert "local folder" in result.output


# ---------------------------------------------------------------- evaluation (`llmft plan --eval`)

def eval_plan(size: str, vllm_available: bool = False, *overrides: str):
    cfg = shipped(size, overrides)
    return eval_estimate(load_model_config(cfg.model.name_or_path)[0], cfg, 24, seq_len=cfg.data.max_length,
                         vllm_available=vllm_available)


@pytest.mark.parametrize("size, picked", [("7b", "replicas"), ("13b", "zero3"), ("70b", "zero3")])
def test_eval_auto_picks_replicas_when_the_model_fits_one_gpu_else_zero3(size, picked):
    report = eval_plan(size)
    assert report["auto"] == picked
    engine = report["engines"][picked]
    assert engine["fits"] and engine["device_total_gb"] <= 24
    shown = sum(item["gb"] for item in engine["per_device"] if item["lives_on"] == "device")
    assert shown == pytest.approx(engine["device_total_gb"]) and shown <= 24
    assert report["engines"]["vllm"]["unavailable"].startswith("vLLM is not installed")
    if picked == "zero3":  # one group over every GPU, weights sharded
        assert not report["engines"]["replicas"]["fits"]
        assert (engine["gpus_per_replica"], engine["replicas"]) == (report["setup"]["workers"], 1)
    else:
        assert (engine["gpus_per_replica"], engine["replicas"]) == (1, 16)


@pytest.mark.parametrize("size, tensor_parallel", [("13b", 2), ("70b", 8)])
def test_eval_auto_picks_vllm_where_installed_with_the_smallest_tensor_parallel_size_that_fits(size, tensor_parallel):
    report = eval_plan(size, True)
    vllm = report["engines"]["vllm"]
    assert report["auto"] == "vllm" and vllm["fits"] and vllm["device_total_gb"] <= 24
    assert vllm["gpus_per_replica"] == tensor_parallel
    assert vllm["replicas"] == report["setup"]["workers"] // tensor_parallel
    assert eval_plan("7b", True)["auto"] == "replicas"  # a whole model per GPU still fits


def test_eval_memory_is_weights_plus_the_batchs_kv_cache():
    report = eval_plan("7b")
    items = {e: {i["name"]: i for i in report["engines"][e]["per_device"]} for e in ("replicas", "zero3")}
    params = report["model"]["parameters"]
    assert items["replicas"]["weights"]["gb"] == pytest.approx(2 * params / GB)
    # Keys and values, 32 layers x 32 heads x 128 dims x 2 bytes, for 16 sequences of 512 tokens: 4 GiB.
    assert items["replicas"]["KV cache"]["gb"] == pytest.approx(2 * 32 * 32 * 128 * 2 * 16 * 512 / GB)
    assert items["zero3"]["KV cache"]["gb"] == items["replicas"]["KV cache"]["gb"]  # ZeRO-3 shards weights only
    assert items["zero3"]["weights"]["gb"] == pytest.approx(2 * params / 16 / GB, rel=1e-6)
    assert items["zero3"]["weights"]["lives_on"] == "cpu"  # the 7B recipe offloads parameters
    assert items["replicas"]["activations"]["gb"] < items["replicas"]["KV cache"]["gb"]
    doubled = eval_plan("7b", False, "eval.batch_size=32")
    assert doubled["engines"]["replicas"]["per_device"][1]["gb"] == pytest.approx(2 * items["replicas"]["KV cache"]["gb"])


def test_eval_nothing_fits_a_70b_on_two_gpus():
    report = eval_plan("70b", True, "scaling.num_workers=2", "training.global_batch_size=16",
                       "deepspeed.offload_params=none")
    assert report["auto"] is None and not any(e["fits"] for e in report["engines"].values())


def test_eval_on_cpu_workers_vllm_is_unavailable():
    cfg = load_config(REPO / "configs" / "viggo" / "tiny-cpu.yaml")
    report = eval_estimate(fixture_model_config("smollm2-135m"), cfg, 8, seq_len=256, vllm_available=True)
    assert report["auto"] == "replicas" and "GPU only" in report["engines"]["vllm"]["unavailable"]


def test_cli_plan_eval_shows_each_engine_and_autos_pick():
    result = CliRunner().invoke(main, ["plan", str(REPO / "configs" / "viggo" / "llama-2-13b.yaml"), "--eval"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "GPUs per replica" in text and "KV cache" in text and "zero3 (auto)" in text
    assert "`eval.engine: auto` picks zero3" in text
    as_json = CliRunner().invoke(main, ["plan", str(REPO / "configs" / "viggo" / "llama-2-70b.yaml"), "--eval", "--json"])
    assert json.loads(as_json.stdout)["eval"]["auto"] == "zero3"
