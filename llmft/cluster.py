"""The Ray cluster a command runs on: the one the user names, or an embedded one of its own.

Joining a running cluster is an explicit choice (`--address`, or `RAY_ADDRESS`). Without one, a
command starts its own cluster on loopback with `ray.init(address="local")`: a plain `ray.init()`
would first attach to whatever cluster `<Ray temp dir>/ray/ray_current_cluster` names (left
behind by a `ray start` cluster even after it was killed), and retry a dead one for minutes.

Training and evaluation both connect through here.
"""

from __future__ import annotations

import os
import socket

from llmft.config import Config
from llmft.errors import LlmftError

LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT_S = 5.0


def keep_embedded_ray_on_loopback(address: str | None) -> None:
    """Ray 2.60 replaces a node address of 127.0.0.1 by the machine's network address
    (`ray._private.services.resolve_ip_for_localhost`), and its GCS, raylet and agents then listen
    on every interface. Its single-node switch RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps the node
    on 127.0.0.1. Ray reads it when first imported, so this runs before any `import ray`; it is
    left alone when joining a named cluster."""
    if not (address or os.environ.get("RAY_ADDRESS")):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def init_ray(address: str | None) -> None:
    """Join the Ray cluster at `address`/$RAY_ADDRESS, or start an embedded one on loopback."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        join_cluster(address)
    else:
        start_embedded_cluster()


def join_cluster(address: str) -> None:
    """Connect to the cluster the user named; an address that does not answer fails in seconds
    (Ray itself would retry an unreachable GCS for many minutes)."""
    import ray

    if address.startswith(("http://", "https://")):
        raise LlmftError(f"Ray address {address} is a dashboard (Jobs API) address. `llmft train` and "
                         "`llmft eval` join a cluster by its GCS address (HOST:6379) or a Ray Client address "
                         "(ray://HOST:10001); to run on a cluster through its dashboard use `llmft submit`.")
    if address != "auto":
        check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=True)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as exc:
        raise LlmftError(f"Cannot connect to Ray at {address}: {exc}. Check the address "
                         "(`ray status` on the head), or unset RAY_ADDRESS to use a local Ray.") from None


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail with a clear message unless something accepts connections at `address` (HOST:PORT or ray://HOST:PORT)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise LlmftError(f"Ray address {address!r} is not of the form HOST:PORT (or ray://HOST:PORT); "
                         "give --address or RAY_ADDRESS as e.g. 10.0.0.1:6379.")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise LlmftError(f"No Ray cluster answers at {address} ({exc.strerror or exc} within {timeout_s:g} s). "
                         "Check the address and that the cluster is up (`ray status` on the head), or unset "
                         "RAY_ADDRESS and drop --address to run on an embedded local Ray.") from None


def start_embedded_cluster() -> None:
    """A new local cluster that only this command uses, listening on loopback only.

    Processes Ray starts for this cluster (Ray Train's controller and its PlacementGroupCleaner,
    the workers, Ray Data actors) call Ray's state API, which finds its cluster through
    RAY_ADDRESS and, without it, looks for every GCS process on the machine and fails with "Found
    multiple active Ray instances" while another Ray runs (`ray.util.state.get_actor` ->
    `services.canonicalize_bootstrap_address_or_die`). So the GCS port is chosen here (Ray reads
    RAY_GCS_SERVER_PORT when it starts a head) and its address reaches every process of this job
    through the job's runtime environment. The driver's own environment is left alone: it is
    connected already, and a later command or child process must not inherit this cluster.

    The dashboard runs too, on 127.0.0.1: it serves the State API. Ray Train's PlacementGroupCleaner
    asks it whether the run's controller is alive and frees the workers' placement group when it
    died (a trial that Ray Tune stopped, a crashed driver); without it the cleaner can only retry.

    Ray Train's PreemptionWatcher is left out: it watches for nodes a cloud is about to take
    back, and this cluster is one machine that lives and dies with the command. It is one Python
    process less to start (about 2 s of a 2-core machine's start-up).
    """
    import ray

    gcs_address = f"{LOOPBACK}:{_free_port()}"
    os.environ["RAY_GCS_SERVER_PORT"] = gcs_address.rpartition(":")[2]
    try:
        context = ray.init(address="local", _node_ip_address=LOOPBACK, include_dashboard=True, dashboard_host=LOOPBACK,
                           dashboard_port=_free_port(), log_to_driver=True,
                           runtime_env={"env_vars": {"RAY_ADDRESS": gcs_address,
                                                     "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}})
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]
    if context.address_info["gcs_address"] != gcs_address:  # the processes would look for the wrong cluster
        ray.shutdown()
        raise RuntimeError(f"Ray started its GCS at {context.address_info['gcs_address']}, not at {gcs_address}.")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def check_placement(cfg: Config) -> None:
    """Fail in seconds, not hang, when the cluster cannot hold the requested workers."""
    import ray

    total = ray.cluster_resources()
    workers = cfg.world_sizes[0]  # an elastic run starts with what fits, down to its minimum
    needs = {"CPU": workers * cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        needs["GPU"] = workers
    for name, amount in cfg.scaling.resources_per_worker.items():
        needs[name] = needs.get(name, 0) + amount * workers
    short = {k: (v, total.get(k, 0)) for k, v in needs.items() if total.get(k, 0) < v}
    if short:
        detail = ", ".join(f"{k}: needs {need:g}, cluster has {have:g}" for k, (need, have) in short.items())
        raise LlmftError(f"The Ray cluster cannot place {workers} workers ({detail}). Lower "
                         "scaling.num_workers or scaling.cpus_per_worker, or add nodes.")
