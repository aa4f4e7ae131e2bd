"""Several llmft commands on one machine at once, as teams run them.

One shared run: two tiny `llmft train` runs (1 worker each) start together, and an `llmft eval`
starts once a training worker is up. All three run with a Ray temp dir whose
`ray/ray_current_cluster` names a dead address, under umask 022, while a watcher polls every
listening socket of each command and all its descendants (GCS, raylet, agents, Train controller
and workers, Ray Data actors).

What these catch: an embedded Ray that attaches to a cluster named by Ray's on-disk state (the
dead address) or to another run's cluster; a cluster's helper actors looking up the wrong cluster
("Found multiple active Ray instances" from the PlacementGroupCleaner); two runs sharing a run
folder or metrics file; any Ray service listening beyond loopback during training or evaluation;
files written owner-only (0600/0700) that a teammate cannot read; a named address that does not
answer hanging for minutes instead of failing with a clear message.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.support import REPO, closed_port

pytestmark = pytest.mark.e2e

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
TRAIN_WORKER = "RayTrainWorker"


@dataclass
class Command:
    """One llmft command started as a child, and what the watcher saw of its process tree."""

    name: str
    process: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)
    listeners: set[tuple[str, str, int]] = field(default_factory=set)  # (process, ip, port)
    titles: set[str] = field(default_factory=set)
    gcs_ports: set[int] = field(default_factory=set)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class SharedRun:
    commands: dict[str, Command]
    overlaps: list[set[str]]  # per poll: which commands had a Ray worker process alive
    stale_address: str
    runs_dir: Path
    eval_out: Path
    compare_out: Path
    cache_dir: Path


# Ray Train's controller logs this with a traceback when its autoscaling coordinator actor takes
# over 5 s to start (a fixed timeout in Ray 2.60), as it can with three clusters on two cores.
# Ray calls it transient and retries; it is not about which cluster a process talks to.
RAY_TRANSIENT = "Failed to send resource request"


def tracebacks(output: str) -> list[str]:
    """The tracebacks in a command's output, except those following Ray's own transient warning."""
    found, lines = [], output.splitlines()
    for i, line in enumerate(lines):
        if "Traceback (most recent call last)" in line and not (i and RAY_TRANSIENT in lines[i - 1]):
            found.append("\n".join(lines[max(0, i - 2):i + 30]))
    return found


def _titles(proc: psutil.Process) -> str:
    return " ".join(proc.cmdline())[:200]


class Watcher(threading.Thread):
    """Poll each running command's process tree: listening sockets, process titles, GCS ports."""

    def __init__(self, commands: dict[str, Command]):
        super().__init__(daemon=True)
        self.commands, self.overlaps, self.stop = commands, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            alive = set()
            for command in list(self.commands.values()):
                if command.process.poll() is not None:
                    continue
                try:
                    tree = [psutil.Process(command.process.pid)]
                    tree += tree[0].children(recursive=True)
                except psutil.NoSuchProcess:
                    continue
                for proc in tree:
                    try:
                        title = _titles(proc)
                        connections = proc.net_connections(kind="inet")
                    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                        continue
                    command.titles.add(title)
                    if title.startswith("ray::") and "IDLE" not in title:
                        alive.add(command.name)
                    for arg in proc.cmdline() if "gcs_server" in title else []:
                        if arg.startswith("--gcs_server_port="):
                            command.gcs_ports.add(int(arg.split("=", 1)[1]))
                    command.listeners |= {(title[:60], c.laddr.ip, c.laddr.port)
                                          for c in connections if c.status == psutil.CONN_LISTEN}
            self.overlaps.append(alive)
            time.sleep(0.25)


def _start(name: str, args: list[str], env: dict[str, str], logs: Path) -> Command:
    log = logs / f"{name}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "llmft.cli", *args], cwd=REPO, env=env, umask=0o022,
                                   stdout=handle, stderr=subprocess.STDOUT)
    return Command(name, process, log)


@pytest.fixture(scope="module")
def shared_run(tiny_model_dir, tmp_path_factory) -> SharedRun:
    base = tmp_path_factory.mktemp("shared")
    runs_dir, cache_dir, logs = base / "runs", base / "cache", base / "logs"
    logs.mkdir()
    # A short path: Ray puts unix sockets under its temp dir (about 107 bytes at most).
    ray_tmp = Path(tempfile.mkdtemp(prefix="llmft-stale-", dir="/tmp"))
    stale_address = f"127.0.0.1:{closed_port()}"
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text(stale_address)  # what a SIGKILLed `ray start` leaves
    # Only what a user's shell would have: no Ray address, no loopback switch from the test session.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env["RAY_TMPDIR"] = str(ray_tmp)
    config = ["configs/viggo/tiny-cpu.yaml", f"model.name_or_path={tiny_model_dir}", f"data.cache_dir={cache_dir}"]
    train = ["train", *config, f"output.dir={runs_dir}", "output.run_name=null", "scaling.num_workers=1",
             "training.max_steps=12", "training.global_batch_size=4", "training.micro_batch_size=4",
             "training.eval_every_steps=null", "training.generation_eval_every_steps=null",
             "training.checkpoint_every_steps=null", "data.valid=null", "logging.progress_bar=false"]
    eval_out = base / "eval" / "results.json"
    commands: dict[str, Command] = {}
    watcher = Watcher(commands)
    watcher.start()
    try:
        commands["train-a"] = _start("train-a", train, env, logs)
        commands["train-b"] = _start("train-b", train, env, logs)
        deadline = time.monotonic() + 600
        while not any(TRAIN_WORKER in t for c in commands.values() for t in c.titles):
            assert time.monotonic() < deadline and all(c.process.poll() is None for c in commands.values()), \
                "no training worker came up:\n" + "\n".join(c.output()[-3000:] for c in commands.values())
            time.sleep(0.5)
        commands["eval"] = _start("eval", ["eval", *config, "scaling.num_workers=1", "--limit", "8",
                                           "--out", str(eval_out)], env, logs)
        for command in list(commands.values()):
            command.process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        watcher.stop.set()
        watcher.join()
        for command in commands.values():
            if command.process.poll() is None:
                command.process.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    compare_out = base / "compare"
    subprocess.run([sys.executable, "-m", "llmft.cli", "compare", str(eval_out), str(eval_out),
                    "--out", str(compare_out / "table.md"), "--plot", str(compare_out / "chart.png"),
                    "--side-by-side", str(compare_out / "side.html")],
                   cwd=REPO, env=env, umask=0o022, capture_output=True, timeout=300, check=True)
    return SharedRun(commands, watcher.overlaps, stale_address, runs_dir, eval_out, compare_out, cache_dir)


def test_two_trainings_started_together_both_finish_in_their_own_folders(shared_run):
    """Both runs end cleanly, each in its own run folder with its own metrics, though they started
    in the same second; neither Ray logged another cluster's name."""
    a, b = shared_run.commands["train-a"], shared_run.commands["train-b"]
    for command in (a, b):
        assert command.process.returncode == 0, command.output()[-5000:]
        assert not tracebacks(command.output()) and "multiple active Ray" not in command.output(), \
            tracebacks(command.output()) or command.output()[-5000:]
        # Ray Train's PlacementGroupCleaner reached its own cluster's state API every time.
        assert "Failed to query Ray Train Controller actor state" not in command.output()
        # Training never uses DeepSpeed's shm comm op: it is neither built nor loaded.
        assert "deepspeed_shm_comm" not in command.output()
    folders = sorted(p for p in shared_run.runs_dir.iterdir() if p.is_dir())
    assert len(folders) == 2, folders
    for folder in folders:
        assert folder.name.startswith("viggo-tiny-llama-")
        steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()
                 if "train_loss" in line]
        assert steps == list(range(1, 13)), (folder, steps)  # one run's steps, once each
        assert (folder / "model" / "model.safetensors").is_file()


def test_eval_started_while_training_runs_finishes(shared_run):
    """The eval's own cluster came up while a training worker was alive, and the eval finished."""
    command = shared_run.commands["eval"]
    assert command.process.returncode == 0, command.output()[-5000:]
    assert not tracebacks(command.output()) and "multiple active Ray" not in command.output(), \
        tracebacks(command.output()) or command.output()[-5000:]
    assert json.loads(shared_run.eval_out.read_text())["num_examples"] == 8
    assert any("eval" in alive and alive & {"train-a", "train-b"} for alive in shared_run.overlaps)


def test_each_command_ran_its_own_cluster_never_the_stale_one(shared_run):
    """With `ray_current_cluster` naming a dead address, every command still started its own GCS."""
    ports = {name: c.gcs_ports for name, c in shared_run.commands.items()}
    assert all(len(p) == 1 for p in ports.values()), ports
    distinct = set().union(*ports.values())
    assert len(distinct) == 3, ports
    assert int(shared_run.stale_address.rpartition(":")[2]) not in distinct


def test_every_listening_socket_is_on_loopback_during_training_and_eval(shared_run):
    """The watcher polled while the training workers and the eval's Ray Data workers ran; every
    socket any of their processes listened on was bound to loopback."""
    for name, command in shared_run.commands.items():
        assert command.listeners, name
        beyond = {entry for entry in command.listeners if entry[1] not in LOOPBACK}
        # One exception, not Ray's: rank 0's torch.distributed rendezvous (the TCPStore that Ray
        # Train's process-group setup opens on MASTER_PORT) binds every interface in torch 2.13,
        # which has no bind-address setting for it. It lives in the training worker only: one port,
        # seen under whatever title Ray gives that process for the task it runs at that moment
        # (e.g. `ray::execute._propagate_data_context`).
        store_ports = {port for title, _, port in beyond if title.startswith(f"ray::{TRAIN_WORKER}")}
        assert len(store_ports) <= 1, (name, beyond)
        assert not {entry for entry in beyond if entry[2] not in store_ports}, (name, beyond)
    for name in ("train-a", "train-b"):
        assert any(TRAIN_WORKER in t for t in shared_run.commands[name].titles), name
    eval_workers = {t for t in shared_run.commands["eval"].titles if t.startswith("ray::") and "IDLE" not in t}
    assert any("Map" in t for t in eval_workers), eval_workers


def test_everything_written_has_the_modes_a_plain_open_gives_under_umask_022(shared_run):
    """Exported weights, checkpoints' own files, metrics, the tokenized cache, results,
    predictions, plots and HTML: files 0644 and folders 0755, as a teammate needs to read them."""
    roots = [shared_run.runs_dir, shared_run.cache_dir, shared_run.eval_out.parent, shared_run.compare_out]
    paths = [p for root in roots for p in [root, *root.rglob("*")]]
    names = {p.name for p in paths}
    assert {"model.safetensors", "metrics.jsonl", "llmft_state.json", "rng_rank0.pt", "results.json",
            "results.predictions.jsonl", "chart.png", "side.html"} <= names, sorted(names)
    assert any(p.suffix == ".parquet" for p in paths)
    wrong = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths
             if stat.S_IMODE(p.stat().st_mode) != (0o755 if p.is_dir() else 0o644)}
    assert not wrong, wrong


def test_a_named_address_that_does_not_answer_fails_in_seconds(tiny_model_dir, tmp_path):
    """`--address` or RAY_ADDRESS naming nothing: exit 2 with a clear message. Ray alone retries
    an unreachable GCS for many minutes (the timeout below only guards against that hang)."""
    dead = f"127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    config = ["configs/viggo/tiny-cpu.yaml", f"model.name_or_path={tiny_model_dir}", f"data.cache_dir={tmp_path}"]
    runs = [subprocess.Popen([sys.executable, "-m", "llmft.cli", *args], cwd=REPO, env=env_, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for args, env_ in ((["eval", *config, "--limit", "2", "--address", dead], env),
                               (["train", *config, f"output.dir={tmp_path}"], {**env, "RAY_ADDRESS": dead}))]
    for run in runs:
        _, stderr = run.communicate(timeout=240)
        assert run.returncode == 2, stderr[-3000:]
        assert f"No Ray cluster answers at {dead}" in stderr and "Traceback" not in stderr, stderr[-3000:]
