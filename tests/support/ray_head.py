"""A throw-away Ray head on 127.0.0.1 for the tests.

`ray start --head` is run with every port chosen free, its own temp dir and its own auth token,
so several heads can share a machine and nothing listens beyond loopback: the GCS, the
dashboard (the Jobs API) and the agents bind to 127.0.0.1 only. The head runs under
`ray start --block` as our child; `stop_local_head` ends exactly the processes that child
started. We never call `ray stop`, because it kills every Ray process of the user on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from llmft.errors import LlmftError

LOOPBACK = "127.0.0.1"
# Loopback never goes through an HTTP proxy from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class LocalHead:
    """A running loopback Ray head. `env` holds what a client needs to reach it (no secrets)."""

    dashboard_url: str
    gcs_address: str
    temp_dir: Path
    token_path: Path
    process: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and that this process has not
    handed out before: the kernel may give the same free port to two calls in a row, and `ray
    start` refuses two of its components on one port."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def node_args(temp_dir: Path, num_cpus: int) -> list[str]:
    """`ray start` flags every node needs to share a machine: its own temp dir and resources, and
    every port chosen free (the fixed defaults would collide with another node on the machine)."""
    return [
        "--temp-dir", str(temp_dir),
        "--num-cpus", str(num_cpus),
        "--num-gpus", "0",
        "--node-manager-port", str(free_port()),
        "--object-manager-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
        "--disable-usage-stats",
    ]


def start_local_head(num_cpus: int = 2, temp_root: str | None = None, timeout_s: float = 90,
                     env: dict[str, str] | None = None) -> LocalHead:
    """Start a Ray head bound to 127.0.0.1 with token auth and wait until its Jobs API answers.
    `env` is added to the environment of the head's processes (its jobs and workers inherit it).

    Its working directory is its temp dir, so a job submitted without a working_dir does not
    silently run against whatever folder the caller happened to be in.
    """
    # Short path: Ray puts unix sockets under the temp dir and those are limited to ~107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="llmft-ray-", dir=temp_root or "/tmp"))
    token_path = temp_dir / "auth_token"
    # Our own token (the same format Ray generates) so the test never touches ~/.ray/auth_token.
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    gcs_port, dashboard_port = free_port(), free_port()
    client_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    # Without this, `ray start` replaces 127.0.0.1 by the machine's routable IP; Ray's single-node
    # mode (meant for macOS and Windows) keeps every node address on loopback.
    head_env = env or {}
    env = {**os.environ, **head_env, **client_env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           # Metrics endpoints with fixed default ports (44217, 44227) would collide across heads.
           "AUTOSCALER_METRIC_PORT": str(free_port()), "DASHBOARD_METRIC_PORT": str(free_port())}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(name, None)
    command = [
        _ray_executable(), "start", "--head", "--block",
        "--node-ip-address", LOOPBACK,
        "--port", str(gcs_port),
        "--dashboard-host", LOOPBACK,
        "--dashboard-port", str(dashboard_port),
        "--include-dashboard", "true",
        "--ray-client-server-port", str(free_port()),
        *node_args(temp_dir, num_cpus),
    ]
    log_path = temp_dir / "ray-start.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=temp_dir, start_new_session=True)
    head = LocalHead(
        dashboard_url=f"http://{LOOPBACK}:{dashboard_port}",
        gcs_address=f"{LOOPBACK}:{gcs_port}",
        temp_dir=temp_dir, token_path=token_path, process=process, log_path=log_path,
        env={**client_env, "RAY_ADDRESS": f"http://{LOOPBACK}:{dashboard_port}"},
    )
    try:
        _wait_for_jobs_api(head, timeout_s)
    except LlmftError as exc:
        # The temp dir (and the log in it) goes with the head: keep the log's end in the message.
        tail = "\n".join(head.log_path.read_text(errors="replace").splitlines()[-15:])
        stop_local_head(head)
        raise LlmftError(f"{exc} Its last lines:\n{tail}") from None
    except BaseException:
        stop_local_head(head)
        raise
    return head


def stop_local_head(head: LocalHead, grace_s: float = 5) -> None:
    """Stop the head and everything it started (and only that), then remove its temp dir."""
    stop_ray_start(head.process, grace_s)
    shutil.rmtree(head.temp_dir, ignore_errors=True)


def stop_ray_start(process: subprocess.Popen, grace_s: float) -> None:
    """End a `ray start --block` process and every process under it."""
    stop_ray_starts([process], grace_s)


def stop_ray_starts(processes: list[subprocess.Popen], grace_s: float) -> None:
    """End `ray start --block` processes and every process under them, all at once: SIGTERM first,
    which lets each shut its node down in order (raylet, GCS, dashboard), then SIGKILL whatever is
    left. (A head took more than 20 s to end on SIGTERM alone; its temp dir is removed after anyway.)"""
    started = []
    for process in processes:
        try:
            started += psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _, alive = psutil.wait_procs(started, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def _ray_executable() -> str:
    beside_python = Path(sys.executable).with_name("ray")
    return str(beside_python) if beside_python.exists() else (shutil.which("ray") or "ray")


def _wait_for_jobs_api(head: LocalHead, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.process.poll() is not None:
            raise LlmftError(f"`ray start --head` exited with status {head.process.returncode}.")
        try:
            # The Jobs API answering (with our token) means the job module is up, not just the server.
            request = urllib.request.Request(
                f"{head.dashboard_url}/api/jobs/",
                headers={"Authorization": "Bearer " + head.token_path.read_text().strip()})
            with _NO_PROXY.open(request, timeout=2):
                pass
            return
        except OSError:
            time.sleep(1)
    raise LlmftError(f"The local Ray head did not answer on {head.dashboard_url} within {timeout_s:.0f} s.")
