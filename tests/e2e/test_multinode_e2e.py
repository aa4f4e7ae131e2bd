"""Multi-node training for real: a 3-node Ray cluster on 127.0.0.1 (head and one more node with a
CPU each, and a CPU-less node that sees its own private /tmp folder), an S3 API on 127.0.0.1
(moto's server), real DeepSpeed ZeRO-3 and a tiny Llama.

What these catch:
- workers that all land on one node, or a run in a bucket whose metrics, export or eval input
  do not reach the bucket (or are written on one node's disk instead);
- `--resume latest` from a bucket that replays or skips data or forgets optimizer state;
- a lost node that ends the run instead of shrinking it, a shrink that changes the global batch
  or the training (later losses differ from the uninterrupted run and from a 1-worker resume of
  the same checkpoint), a shrunk run that restarts from an older checkpoint than the last one;
- a resume at another world size whose ZeRO partitions are re-cut wrongly: fp32 master weights,
  Adam moments, per-group settings (weight decay) or optimizer step counts that differ from
  those saved;
- `ray job submit` that does not run on this cluster (its working dir on both nodes), or logs
  without the progress lines;
- unusable storage (unreachable endpoint, missing bucket, no credentials, a folder only one node
  sees) that hangs, prints a traceback or leaves something written, instead of exit 2.

All nodes are stopped by the PIDs the fixture started (never `ray stop`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llmft import storage
from llmft.checkpoint import find_checkpoints, read_state
from llmft.train.logger import read_metrics
from tests.support import REPO, closed_port
from tests.support.cluster import LoopbackCluster, add_node, kill_node, start_cluster, stop_cluster
from tests.support.s3 import TEST_CREDENTIALS, s3_server  # noqa: F401  (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

STEPS = 8
COMMON = ["data.valid=null", f"training.max_steps={STEPS}", "training.checkpoint_every_steps=2",
          "training.eval_every_steps=null", "training.generation_eval_every_steps=null", "training.warmup_steps=1",
          # Two param groups that differ (decay / no decay): a universal load must keep them apart.
          "training.weight_decay=0.1", "output.keep_checkpoints=10"]


@pytest.fixture(scope="module")
def private_dir(tmp_path_factory) -> Path:
    """A folder that the CPU-less node sees as its own empty tmpfs (as on another machine)."""
    return tmp_path_factory.mktemp("node-local")


@pytest.fixture(scope="module")
def cluster(s3_server, private_dir):  # noqa: F811
    # After a node loss, Ray Train keeps trying the old size until its view of the cluster (Ray's
    # autoscaling coordinator, refreshed every 20 s) no longer holds the dead node, each try
    # waiting this long for the worker group (default 60 s). A group that fits places at once.
    # The GCS counts a node dead after 5 missed health checks, one a second here (default every 3 s).
    env = {**TEST_CREDENTIALS, "PYTHONPATH": str(REPO), "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "5",
           "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}
    started = start_cluster(nodes=2, cpus_per_node=1, env=env)
    try:
        add_node(started, num_cpus=0, private_dir=private_dir)
        started.wait_for_nodes(3)
        yield started
    finally:
        stop_cluster(started)


@pytest.fixture(scope="module")
def runs(s3_server, cluster) -> str:  # noqa: F811
    """The bucket folder every run of this module writes to."""
    return s3_server.uri(s3_server.new_bucket("runs"), "runs")


def cli_env(cluster: LoopbackCluster, **extra: str) -> dict[str, str]:
    """A user's shell next to the cluster: its token and the storage credentials, no RAY_ADDRESS."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, **TEST_CREDENTIALS, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(cluster.head.token_path), **extra}


def one_paragraph(text: str) -> str:
    return " ".join(text.split())


def llmft(cluster: LoopbackCluster, *args: str, env: dict[str, str] | None = None,
          timeout: float = 600) -> subprocess.CompletedProcess:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "llmft.cli", *args], cwd=REPO, env=env or cli_env(cluster),
                          capture_output=True, text=True, timeout=timeout)
    print(f"[{time.monotonic() - started:.0f} s] llmft {' '.join(args[:1])} -> {done.returncode}", flush=True)
    return done


def train(cluster: LoopbackCluster, model: Path, runs: str, name: str, *overrides: str, resume: str | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    args = ["train", "configs/viggo/tiny-cpu.yaml", f"model.name_or_path={model}", f"output.dir={runs}",
            f"output.run_name={name}", *COMMON, *overrides, "--address", cluster.address]
    return llmft(cluster, *args, *(["--resume", resume] if resume else []), env=env)


def losses(run: str) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in read_metrics(run) if "train_loss" in r}


def checkpoint_at(run: str, step: int) -> str:
    return next(c for c in find_checkpoints(run) if read_state(c)["position"]["global_step"] == step)


def states(trace: Path, event: str, step: int, world_size: int) -> dict:
    return torch.load(trace / f"states_{event}_step{step}_ws{world_size}.pt")


def assert_same_states(saved: dict, loaded: dict) -> None:
    """Every parameter's fp32 master weight and Adam moments, exactly; each group's own settings."""
    assert saved["params"].keys() == loaded["params"].keys()
    for name, tensors in saved["params"].items():
        for key, tensor in tensors.items():
            torch.testing.assert_close(loaded["params"][name][key], tensor, rtol=0, atol=0, msg=f"{name} {key}")
    assert [g["weight_decay"] for g in loaded["groups"]] == [g["weight_decay"] for g in saved["groups"]] == [0.1, 0.0]


def workers(trace: Path) -> list[dict]:
    return [json.loads(line) for line in (trace / "workers.jsonl").read_text().splitlines()]


def assert_close_relative(got: dict[int, float], want: dict[int, float], steps, rel: float) -> None:
    for step in steps:
        assert got[step] == pytest.approx(want[step], rel=rel), (step, got[step], want[step])


# ------------------------------------------------------------------ a run to the bucket


@pytest.fixture(scope="module")
def straight(cluster, runs, tiny_model_dir, tmp_path_factory):
    """The uninterrupted 2-node run (one worker per node), `llmft train --address` from a user's shell.
    (The resume below goes through `ray job submit`: a job on this cluster is tested there.)"""
    trace = tmp_path_factory.mktemp("trace-straight")
    done = train(cluster, tiny_model_dir, runs, "straight", env=cli_env(cluster, LLMFT_TRACE_DIR=str(trace)))
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    return {"run": storage.join(runs, "straight"), "trace": trace}


def test_a_two_node_run_writes_everything_to_the_bucket(straight, cluster, s3_server, runs, tmp_path):  # noqa: F811
    ranks = {w["rank"]: w["node_id"] for w in workers(straight["trace"])}
    assert len(ranks) == 2 and ranks[0] != ranks[1]  # one worker on each node
    bucket = storage.basename(storage.parent(runs))
    keys = s3_server.keys(bucket)
    assert "runs/straight/metrics.jsonl" in keys and "runs/straight/model/llmft_export.json" in keys
    assert any(k.startswith("runs/straight/model/") and k.endswith(".safetensors") for k in keys)
    assert len(find_checkpoints(straight["run"])) == STEPS // 2
    assert sorted(losses(straight["run"])) == list(range(1, STEPS + 1))

    # `llmft eval` scores the exported model straight from the bucket, on both nodes.
    model, results = storage.join(straight["run"], "model"), storage.join(runs, "eval", "straight.json")
    done = llmft(cluster, "eval", "configs/viggo/tiny-cpu.yaml", "--model", model, "--limit", "8",
                 "--out", results, f"data.cache_dir={tmp_path / 'cache'}", "--address", cluster.address)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    scored = json.loads(storage.read_text(results))
    assert scored["num_examples"] == 8 and "exact_match" in scored["metrics"]
    assert storage.exists(storage.with_suffix(results, ".predictions.jsonl"))
    assert len(list((tmp_path / "cache" / "remote").glob("model-*/config.json"))) == 1  # one node-local copy


def test_resume_latest_from_the_bucket_reproduces_the_run(straight, cluster, runs, tiny_model_dir, tmp_path):
    env = cli_env(cluster, LLMFT_FAULT_KILL_AT_STEP="5", LLMFT_FAULT_MARKER=str(tmp_path / "killed"))
    stopped = train(cluster, tiny_model_dir, runs, "stopped", env=env)
    assert stopped.returncode != 0 and (tmp_path / "killed").exists()  # max_failures 0: it stops in step 5
    run = storage.join(runs, "stopped")
    assert max(read_state(c)["position"]["global_step"] for c in find_checkpoints(run)) == 4

    # `ray job submit` on the same cluster continues it from the bucket.
    overrides = [f"model.name_or_path={tiny_model_dir}", f"output.dir={runs}", "output.run_name=stopped", *COMMON]
    done = subprocess.run(["ray", "job", "submit", "--address", cluster.head.dashboard_url, "--working-dir", ".",
                           "--", "llmft", "train", "configs/viggo/tiny-cpu.yaml", *overrides, "--resume", "latest"],
                          cwd=REPO, env={**cli_env(cluster), **cluster.head.env}, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    assert f"step {STEPS}/{STEPS}" in done.stdout + done.stderr  # the job's progress lines reach its logs
    reference, resumed = losses(straight["run"]), losses(run)
    assert sorted(resumed) == sorted(reference)
    for step in range(5, STEPS + 1):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-5), step


# ------------------------------------------------------------------ losing a node, another world size


@pytest.fixture(scope="module")
def shrunk(straight, cluster, runs, tiny_model_dir, tmp_path_factory):
    """An elastic [1, 2] run whose second node dies during step 5 (after the checkpoint at step 4)."""
    trace = tmp_path_factory.mktemp("trace-shrunk")
    marker = trace / "paused"
    env = cli_env(cluster, LLMFT_TRACE_DIR=str(trace), LLMFT_TRACE_STATES="1", LLMFT_FAULT_PAUSE_AT_STEP="5",
                  LLMFT_FAULT_MARKER=str(marker))
    args = [sys.executable, "-m", "llmft.cli", "train", "configs/viggo/tiny-cpu.yaml",
            f"model.name_or_path={tiny_model_dir}", f"output.dir={runs}", "output.run_name=shrunk", *COMMON,
            "scaling.num_workers=[1,2]", "training.max_failures=3", "--address", cluster.address]
    log = trace / "driver.log"
    with log.open("w") as out:
        driver = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert driver.poll() is None, log.read_text()[-5000:]
            assert time.monotonic() < deadline, "the run never reached step 5"
            time.sleep(0.5)
        node = cluster.nodes[0]  # the second node with a CPU: one of the two workers is there
        kill_node(node)
        assert driver.wait(timeout=900) == 0, log.read_text()[-5000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    # Bring a node back for the tests that need two workers again.
    add_node(cluster, num_cpus=1)
    cluster.wait_for_nodes(3)
    return {"run": storage.join(runs, "shrunk"), "trace": trace}


@pytest.fixture(scope="module")
def resumed_on_one(shrunk, cluster, runs, tiny_model_dir, tmp_path_factory):
    """`--resume` of the elastic run's step-4 checkpoint (2 workers) on 1 worker."""
    trace = tmp_path_factory.mktemp("trace-on-one")
    done = train(cluster, tiny_model_dir, runs, "on-one", "scaling.num_workers=1",
                 resume=checkpoint_at(shrunk["run"], 4),
                 env=cli_env(cluster, LLMFT_TRACE_DIR=str(trace), LLMFT_TRACE_STATES="1"))
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    run = next(f for f in storage.list_folders(runs, prefix="on-one"))
    return {"run": run, "trace": trace}


def test_losing_a_node_shrinks_the_run_and_keeps_the_training(shrunk, resumed_on_one, straight):
    starts = workers(shrunk["trace"])
    assert {w["world_size"] for w in starts[:2]} == {2} and len({w["node_id"] for w in starts[:2]}) == 2
    assert [w["world_size"] for w in starts[2:]] == [1]  # one restart, on the worker left
    shrunk_losses = losses(shrunk["run"])
    assert sorted(shrunk_losses) == list(range(1, STEPS + 1))  # every planned step
    # It went on from the last checkpoint in the bucket (step 4), its states re-cut for 1 worker.
    saved = states(shrunk["trace"], "saved", 4, 2)
    assert_same_states(saved, states(shrunk["trace"], "restored", 4, 1))
    assert states(shrunk["trace"], "restored", 4, 1)["steps"] and \
        set(states(shrunk["trace"], "restored", 4, 1)["steps"]) == {4.0}
    assert set(states(shrunk["trace"], "saved", 6, 1)["steps"]) == {6.0}  # each group counts its own steps
    # After the shrink: as a 1-worker resume of the same checkpoint, and as the uninterrupted run.
    one = losses(resumed_on_one["run"])
    for step in range(5, STEPS + 1):
        assert shrunk_losses[step] == pytest.approx(one[step], abs=1e-5), step
    assert_close_relative(shrunk_losses, losses(straight["run"]), range(5, STEPS + 1), rel=1e-4)


def test_a_two_worker_checkpoint_resumes_on_one(shrunk, resumed_on_one, straight):
    assert_same_states(states(shrunk["trace"], "saved", 4, 2), states(resumed_on_one["trace"], "restored", 4, 1))
    assert_close_relative(losses(resumed_on_one["run"]), losses(straight["run"]), range(5, STEPS + 1), rel=1e-4)


def test_a_one_worker_checkpoint_resumes_on_two(resumed_on_one, straight, cluster, runs, tiny_model_dir, tmp_path):
    """Growing 1 -> 2 workers, one per node: catches a node whose workers find no universal
    conversion (here both nodes share 127.0.0.1, so Ray Train numbers their workers' local ranks
    0 and 1), and states or losses that differ from those saved / the uninterrupted run."""
    trace = tmp_path / "trace"
    trace.mkdir()
    done = train(cluster, tiny_model_dir, runs, "on-two", "scaling.num_workers=2",
                 resume=checkpoint_at(resumed_on_one["run"], 6),
                 env=cli_env(cluster, LLMFT_TRACE_DIR=str(trace), LLMFT_TRACE_STATES="1"))
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    assert_same_states(states(resumed_on_one["trace"], "saved", 6, 1), states(trace, "restored", 6, 2))
    run = next(f for f in storage.list_folders(runs, prefix="on-two"))
    assert_close_relative(losses(run), losses(straight["run"]), range(7, STEPS + 1), rel=1e-4)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("problem", ["unreachable endpoint", "missing bucket", "no credentials"])
def test_unusable_storage_exits_2_and_writes_nothing(problem, cluster, s3_server, tiny_model_dir, tmp_path):  # noqa: F811
    bucket = s3_server.new_bucket("untouched")
    env = cli_env(cluster)
    if problem == "unreachable endpoint":
        out, expected = f"s3://{bucket}/runs?endpoint_override=http://127.0.0.1:{closed_port()}", "cannot reach the storage endpoint"
    elif problem == "missing bucket":
        out, expected = s3_server.uri("no-such-bucket", "runs"), "bucket 'no-such-bucket' does not exist"
    else:
        out, expected = s3_server.uri(bucket, "runs"), "no AWS credentials"
        for name in TEST_CREDENTIALS:
            env.pop(name, None)
        env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
                   AWS_EC2_METADATA_DISABLED="true")
    done = llmft(cluster, "train", "configs/viggo/tiny-cpu.yaml", f"model.name_or_path={tiny_model_dir}",
                 f"output.dir={out}", "--address", cluster.address, env=env, timeout=120)
    assert done.returncode == 2 and expected in one_paragraph(done.stderr), done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert s3_server.keys(bucket) == []
    import pyarrow.fs as pafs

    assert s3_server.filesystem().get_file_info("no-such-bucket").type == pafs.FileType.NotFound


def test_a_folder_one_node_cannot_see_is_refused(cluster, private_dir, tiny_model_dir):
    done = llmft(cluster, "train", "configs/viggo/tiny-cpu.yaml", f"model.name_or_path={tiny_model_dir}",
                 f"output.dir={private_dir}", "--address", cluster.address, timeout=300)
    assert done.returncode == 2 and "every node must reach output.dir" in one_paragraph(done.stderr), \
        done.stderr[-3000:]
    assert "Traceback" not in done.stderr and list(private_dir.iterdir()) == []
