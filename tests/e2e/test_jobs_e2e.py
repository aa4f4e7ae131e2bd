"""Ray Jobs end to end: a real Ray head on 127.0.0.1 (own ports, temp dir and auth token), jobs
submitted through `llmft submit`, `ray job submit` and `submit_entrypoint`, followed, listed,
stopped.

What these catch: a submission that does not upload the working dir, uploads outputs/caches, or
runs the cluster's installed llmft instead of the submitted source; `--follow` exit statuses
that do not match the job's end (SUCCEEDED 0, FAILED 1, STOPPED 130); `jobs stop` that does not
stop; an unknown job id or a dead address that hangs or prints a traceback instead of exit 2;
token auth that breaks the SDK, or a token / HF_TOKEN printed; the tiny training config failing
under Ray Jobs (through llmft or plain Ray), or a job stopped mid-training that `--resume latest`
cannot continue step for step.

The head is stopped in a finally by `stop_local_head`, which ends only the processes it started
(`ray stop` would kill every Ray process of the user on the machine).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.ray_head import LocalHead, start_local_head, stop_local_head

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]
from tests.support import REPO

FAKE_HF_TOKEN = "hf_e2e_not_a_real_token_5f3a"


@pytest.fixture(scope="module")
def head():
    started = start_local_head(num_cpus=2)
    try:
        yield started
    finally:
        stop_local_head(started)
    assert started.process.poll() is not None


@pytest.fixture
def client_env(head, monkeypatch):
    """This process talks to the head as a user would: RAY_ADDRESS and the token file in the env."""
    for name, value in head.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    return head


def run_cli(head: LocalHead, *args: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = (),
            timeout: float = 900, cwd: Path = REPO) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **head.env}
    for name in ("RAY_AUTH_TOKEN", "RAY_API_SERVER_ADDRESS"):
        full_env.pop(name, None)
    full_env.update(env or {})
    for name in unset:
        full_env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "llmft.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    secret = head.token_path.read_text().strip()
    assert secret not in done.stdout + done.stderr, "the Ray token was printed"
    return done


def job_status(job_id: str) -> str:
    from llmft.launch import jobs

    return str(jobs.get_job(jobs.job_client(None), job_id).status)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- plumbing, with trivial entrypoints


def test_head_listens_on_loopback_only(head):
    import psutil

    root = psutil.Process(head.process.pid)
    pids = {root.pid, *(p.pid for p in root.children(recursive=True))}
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert listening
    exposed = [c.laddr for c in listening if c.laddr.ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert not exposed, f"the local head listens beyond loopback: {exposed}"


def test_submitted_source_and_working_dir_are_what_the_job_sees(client_env, capsys):
    from llmft.launch.submit import submit_entrypoint

    probe = ("import json, os, llmft; print('PROBE ' + json.dumps({'llmft': llmft.__file__, 'cwd': os.getcwd(), "
             "'configs': os.path.exists('configs/viggo/tiny-cpu.yaml'), 'cache': os.path.exists('.cache'), "
             "'outputs': os.path.exists('outputs'), 'git': os.path.exists('.git')}))")
    code = submit_entrypoint(shlex.join(["python", "-c", probe]), address=None, follow=True, working_dir=REPO)
    out = capsys.readouterr().out
    assert code == 0, out
    seen = json.loads(next(line for line in out.splitlines() if line.startswith("PROBE "))[6:])
    assert seen["configs"] and not seen["cache"] and not seen["outputs"] and not seen["git"]
    # The uploaded copy, not the llmft installed in the environment (an editable install of this
    # checkout), is what the job imports.
    assert seen["llmft"].startswith(seen["cwd"]) and not seen["llmft"].startswith(str(REPO)), seen


def test_follow_exit_statuses_match_how_the_job_ended(client_env, head):
    from llmft.launch.submit import submit_entrypoint

    assert submit_entrypoint("python -c 'import sys; sys.exit(3)'", address=None, follow=True) == 1

    assert submit_entrypoint("sleep 300", address=None, follow=False, submission_id="e2e-sleeper") == 0
    deadline = time.monotonic() + 60
    while job_status("e2e-sleeper") != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    listed = run_cli(head, "jobs", "list")
    assert listed.returncode == 0 and "e2e-sleeper" in listed.stdout and "RUNNING" in listed.stdout
    stopped = run_cli(head, "jobs", "stop", "e2e-sleeper", timeout=120)
    assert stopped.returncode == 0 and "STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr
    assert job_status("e2e-sleeper") == "STOPPED"
    followed = run_cli(head, "jobs", "logs", "e2e-sleeper", "--follow", timeout=120)
    assert followed.returncode == 130, followed.stderr
    status = run_cli(head, "jobs", "status", "e2e-sleeper")
    assert status.returncode == 0 and "STOPPED" in status.stdout


def test_unknown_job_ids_exit_2_with_a_clear_message(head):
    for command in (["status"], ["logs"], ["logs", "--follow"], ["stop"]):
        done = run_cli(head, "jobs", command[0], "no-such-job", *command[1:], timeout=60)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "No job 'no-such-job'" in done.stderr and "Traceback" not in done.stderr


def test_unreachable_address_and_missing_token_fail_fast(head, tmp_path):
    dead = f"http://127.0.0.1:{closed_port()}"
    for args in (["jobs", "list", "--address", dead],
                 ["submit", "configs/viggo/llama-2-7b.yaml", "--address", dead, "--follow"]):
        started = time.monotonic()
        done = run_cli(head, *args, timeout=60)
        assert done.returncode == 2 and "Cannot reach the Ray dashboard" in done.stderr, done.stderr
        assert time.monotonic() - started < 15
    # --address wins over the environment (Ray's SDK alone would let the environment win).
    done = run_cli(head, "jobs", "list", "--address", head.dashboard_url,
                   env={"RAY_ADDRESS": dead, "RAY_API_SERVER_ADDRESS": dead}, timeout=60)
    assert done.returncode == 0, done.stderr
    # No token anywhere (not in the env, not in ~/.ray): a clear message, not a 401 traceback.
    done = run_cli(head, "jobs", "list", env={"HOME": str(tmp_path)}, unset=("RAY_AUTH_TOKEN_PATH",), timeout=60)
    assert done.returncode == 2 and "authentication token" in done.stderr, done.stderr


def test_plain_ray_job_submit_works_against_the_same_head(head, tmp_path):
    (tmp_path / "hello.py").write_text("print('hello from the working dir')\n")
    env = {**os.environ, **head.env}
    done = subprocess.run(["ray", "job", "submit", "--address", head.dashboard_url, "--working-dir", str(tmp_path),
                           "--", "python", "hello.py"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "hello from the working dir" in done.stdout + done.stderr


# ---------------------------------------------------------------- the tiny training config


def tiny_overrides(model_dir: Path, out: Path, run_name: str, *extra: str) -> list[str]:
    return [f"model.name_or_path={model_dir}", f"output.dir={out}", f"output.run_name={run_name}",
            "training.max_steps=6", "training.eval_every_steps=3", "training.checkpoint_every_steps=3",
            "logging.progress_bar=false", *extra]


def assert_run_outputs(run_dir: Path) -> None:
    from llmft.train.logger import read_metrics

    assert any("train_loss" in record for record in read_metrics(run_dir)), run_dir
    assert (run_dir / "model" / "config.json").is_file()
    assert list((run_dir / "model").glob("*.safetensors"))


def test_training_stopped_mid_way_resumes_from_a_complete_checkpoint(client_env, head, tiny_model_dir, tmp_path):
    """Started with plain `ray job submit` (the repo's .rayignore keeps outputs and caches out of
    the upload), stopped with `llmft jobs stop`, continued with `llmft submit --follow --resume latest`
    (one training test covers both ways in, to keep the suite's time)."""
    from llmft.checkpoint import find_checkpoints, read_state
    from llmft.launch import jobs
    from llmft.train.logger import read_metrics

    run_dir = tmp_path / "stopped"
    overrides = tiny_overrides(tiny_model_dir, tmp_path, "stopped", "training.max_steps=16",
                               "training.checkpoint_every_steps=2", "training.eval_every_steps=2")
    started = subprocess.run(["ray", "job", "submit", "--address", head.dashboard_url, "--working-dir", ".",
                              "--submission-id", "e2e-stopped-training", "--no-wait",
                              "--", "llmft", "train", "configs/viggo/tiny-cpu.yaml", *overrides],
                             cwd=REPO, env={**os.environ, **head.env}, capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, (started.stdout + started.stderr)[-6000:]
    deadline = time.monotonic() + 600
    while not find_checkpoints(run_dir):
        status = job_status("e2e-stopped-training")
        assert status in ("PENDING", "RUNNING"), f"the job ended ({status}) before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(1)
    # Stopped wherever it is (the exact phases of a save cut short are tested in test_checkpoint_e2e.py).
    stopped = run_cli(head, "jobs", "stop", "e2e-stopped-training", timeout=120)
    assert stopped.returncode == 0 and "STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr
    assert job_status("e2e-stopped-training") == "STOPPED"
    complete = find_checkpoints(run_dir)
    latest_step = max(read_state(folder)["position"]["global_step"] for folder in complete)
    assert 0 < latest_step < 16
    # Lines up to the checkpoint, as the stopped run wrote them (with its own timings).
    before = {json.loads(line)["step"]: line for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if line and json.loads(line).get("step", 0) <= latest_step}

    resumed = run_cli(head, "submit", "configs/viggo/tiny-cpu.yaml", *overrides, "--resume", "latest", "--follow",
                      env={"HF_TOKEN": FAKE_HF_TOKEN})
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-6000:]
    assert FAKE_HF_TOKEN not in output and "HF_TOKEN" in resumed.stderr  # named, never shown
    job_id = resumed.stdout.splitlines()[0].strip()
    assert job_id.startswith("llmft-viggo-tiny-cpu-")
    info = jobs.get_job(jobs.job_client(None), job_id)
    assert str(info.status) == "SUCCEEDED"
    assert info.runtime_env["env_vars"]["HF_TOKEN"] == FAKE_HF_TOKEN  # passed through to the job
    assert_run_outputs(run_dir)
    steps = [record["step"] for record in read_metrics(run_dir) if "train_loss" in record]
    assert steps == list(range(1, 17)), steps  # every step once: no gap, no step trained twice
    after = (run_dir / "metrics.jsonl").read_text().splitlines()
    # A resume keeps the stopped run's lines up to its checkpoint; a restart from step 0 would
    # have rewritten them (throughput and times differ between runs).
    assert all(line in after for line in before.values())
