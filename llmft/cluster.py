"""The Ray cluster a command runs on: an embedded one on loopback, or the one the user names.

Training and evaluation both connect through here.
"""

from __future__ import annotations

import os

from llmft.config import Config
from llmft.errors import LlmftError


def keep_embedded_ray_on_loopback(address: str | None) -> None:
    """Without this, an embedded Ray's GCS, raylet and agents listen on every interface even with
    `_node_ip_address=127.0.0.1`. Ray reads the switch when it is first imported, so this runs
    before any `import ray`; it is left alone when joining a real cluster."""
    if not (address or os.environ.get("RAY_ADDRESS")):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def init_ray(address: str | None, *, dashboard: bool = False) -> None:
    """Join the Ray cluster at `address`/$RAY_ADDRESS, or start an embedded one on loopback.

    `dashboard`: an embedded Ray also runs its dashboard (on 127.0.0.1), which serves Ray's State
    API. `llmft sweep` needs it: when Tune stops a trial (ASHA, Ctrl+C) it kills that trial's Ray
    Train controller, and Ray Train's placement-group cleaner asks the State API whether the
    controller died before it releases the trial's workers. Without it the next trial never starts.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            raise LlmftError(f"Cannot connect to Ray at {address}: {exc}. Check the address "
                             "(`ray status` on the head), or unset RAY_ADDRESS to use a local Ray.") from None
    else:
        # Loopback only: an embedded Ray must never expose its ports or dashboard to the network.
        context = ray.init(_node_ip_address="127.0.0.1", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                           log_to_driver=True)
        # Ray's helper processes look the cluster up again; point them at this one, not at any
        # other Ray running on the machine.
        os.environ["RAY_ADDRESS"] = context.address_info["address"]


def check_placement(cfg: Config) -> None:
    """Fail in seconds, not hang, when the cluster cannot hold the requested workers."""
    import ray

    total = ray.cluster_resources()
    needs = {"CPU": cfg.scaling.num_workers * cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        needs["GPU"] = cfg.scaling.num_workers
    for name, amount in cfg.scaling.resources_per_worker.items():
        needs[name] = needs.get(name, 0) + amount * cfg.scaling.num_workers
    short = {k: (v, total.get(k, 0)) for k, v in needs.items() if total.get(k, 0) < v}
    if short:
        detail = ", ".join(f"{k}: needs {need:g}, cluster has {have:g}" for k, (need, have) in short.items())
        raise LlmftError(f"The Ray cluster cannot place {cfg.scaling.num_workers} workers ({detail}). Lower "
                         "scaling.num_workers or scaling.cpus_per_worker, or add nodes.")
