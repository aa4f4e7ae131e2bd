"""A real multi-node Ray cluster on 127.0.0.1 for the tests: a head plus more `ray start` nodes.

Each node is its own raylet with its own CPUs, temp dir and ports, exactly as on separate
machines, only every address is 127.0.0.1. The head is `tests/support/ray_head.py`'s (token
auth, Jobs API); the other nodes join it with `ray start --address`. `kill_node` ends a node the
way a dying machine does: its raylet and every process under it at once, with SIGKILL. A node
can be given a private view of one folder (a tmpfs mounted over it in its own mount namespace),
which makes "a local folder that only one node sees" real on a single machine.

Everything is stopped by the PIDs we started; `ray stop` would end every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.support.ray_head import (_NO_PROXY, LOOPBACK, LocalHead, node_args, start_local_head,
                                     stop_ray_start, stop_ray_starts)


# `ray start` for a node that joins a head on 127.0.0.1. Ray's CLI refuses to add a node in its
# single-node mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which keeps the head on loopback), and
# outside it replaces 127.0.0.1, in --address and --node-ip-address alike, by the machine's
# routable address. This keeps the addresses as given: every node stays on 127.0.0.1.
_RAY_START_ON_LOOPBACK = (
    "import sys; import ray._private.services as services; "
    "services.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
)


@dataclass
class Node:
    """A non-head Ray node: the `ray start --block` process and what it started."""

    process: subprocess.Popen
    temp_dir: Path
    log_path: Path


@dataclass
class LoopbackCluster:
    head: LocalHead
    nodes: list[Node] = field(default_factory=list)
    node_env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """What `llmft train --address` and `ray.init` take: the head's GCS."""
        return self.head.gcs_address

    def alive_nodes(self) -> list[dict]:
        """The cluster's alive nodes as the head's state API lists them."""
        request = urllib.request.Request(
            f"{self.head.dashboard_url}/api/v0/nodes?limit=100",
            headers={"Authorization": "Bearer " + self.head.token_path.read_text().strip()})
        with _NO_PROXY.open(request, timeout=10) as response:
            nodes = json.loads(response.read())["data"]["result"]["result"]
        return [n for n in nodes if n["state"] == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if len(self.alive_nodes()) == count:
                    return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"the cluster did not reach {count} alive nodes in {timeout_s:.0f} s")


def start_cluster(nodes: int = 2, cpus_per_node: int = 1, env: dict[str, str] | None = None,
                  temp_root: str | None = None) -> LoopbackCluster:
    """A head and `nodes - 1` more nodes, `cpus_per_node` CPUs each; `env` reaches every node's
    processes (e.g. storage credentials, as a cluster's machines have them)."""
    head = start_local_head(num_cpus=cpus_per_node, temp_root=temp_root, env=env)
    cluster = LoopbackCluster(head=head, node_env=dict(env or {}))
    try:
        for _ in range(nodes - 1):
            add_node(cluster, num_cpus=cpus_per_node, temp_root=temp_root)
        cluster.wait_for_nodes(nodes)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def add_node(cluster: LoopbackCluster, num_cpus: int = 1, private_dir: Path | None = None,
             temp_root: str | None = None) -> Node:
    """Join one more node. With `private_dir`, that folder is an empty tmpfs for this node alone."""
    temp_dir = Path(tempfile.mkdtemp(prefix="llmft-node-", dir=temp_root or "/tmp"))
    env = {**os.environ, **cluster.node_env, "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(cluster.head.token_path),
           # Ray refuses to join a node in its single-node mode (the switch at 0, as the head has it);
           # every address stays 127.0.0.1 through --node-ip-address.
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(name, None)
    command = [
        sys.executable, "-c", _RAY_START_ON_LOOPBACK, "start", "--block",
        "--address", cluster.head.gcs_address,
        "--node-ip-address", LOOPBACK,
        *node_args(temp_dir, num_cpus),
    ]
    if private_dir is not None:
        # A mount namespace of its own (we run as root): the node sees an empty folder there.
        Path(private_dir).mkdir(parents=True, exist_ok=True)
        script = f"mount -t tmpfs llmft-private {shlex.quote(str(private_dir))} && exec {shlex.join(command)}"
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    log_path = temp_dir / "ray-start.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=temp_dir,
                                   start_new_session=True)
    node = Node(process=process, temp_dir=temp_dir, log_path=log_path)
    cluster.nodes.append(node)
    return node


def node_processes(node: Node) -> list[psutil.Process]:
    try:
        root = psutil.Process(node.process.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_node(node: Node) -> None:
    """The node dies at once, like a machine losing power: SIGKILL to its raylet and everything under it."""
    processes = node_processes(node)
    for proc in processes:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)
    node.process.wait(timeout=10)


def stop_node(node: Node, grace_s: float = 5) -> None:
    stop_ray_start(node.process, grace_s)
    shutil.rmtree(node.temp_dir, ignore_errors=True)


def stop_cluster(cluster: LoopbackCluster) -> None:
    """Stop every node we started (by PID) and the head, together, then remove their temp dirs."""
    stop_ray_starts([node.process for node in cluster.nodes] + [cluster.head.process], grace_s=5)
    for folder in [node.temp_dir for node in cluster.nodes] + [cluster.head.temp_dir]:
        shutil.rmtree(folder, ignore_errors=True)
