"""docker/: the image, cluster-launcher YAMLs and KubeRay RayJob agree with pyproject's pins and with
the configs they launch."""

from __future__ import annotations

import shlex

import pytest
import yaml

from tests.support import REPO

DOCKER = REPO / "docker"

KEPT = {"configs/run.yaml", "llmft_extra/mod.py", "data/train.jsonl"}


def _pins() -> dict[str, str]:
    lines = (DOCKER / "constraints.txt").read_text().splitlines()
    pairs = [line.split("==") for line in lines if "==" in line and not line.startswith("#")]
    return {name.strip().lower().replace("_", "-"): version.strip() for name, version in pairs}


def test_image_pins_satisfy_pyproject_and_are_what_the_dockerfile_installs():
    import tomllib
    from packaging.requirements import Requirement

    pins = _pins()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for spec in [*project["dependencies"], *extras["eval"], *extras["tracking"], *extras["gguf"]]:
        requirement = Requirement(spec)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"docker/constraints.txt does not pin {name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name], str(requirement))
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "-c /tmp/constraints.txt" in dockerfile and "DS_BUILD_CPU_ADAM=1" in dockerfile
    assert "DS_BUILD_FUSED_ADAM=1" in dockerfile
    import ray

    assert pins["ray"] == ray.__version__  # the client here and the cluster image speak the same Ray


@pytest.mark.parametrize("name, gpus, config", [
    ("ray-cluster-16gpu.yaml", 16, "configs/viggo/llama-2-13b.yaml"),
    ("ray-cluster-32gpu.yaml", 32, "configs/viggo/llama-2-70b.yaml"),
])
def test_cluster_yamls_provide_the_gpus_their_configs_ask_for(name, gpus, config):
    from llmft.config import load_config

    cluster = yaml.safe_load((DOCKER / name).read_text())
    total = 0
    for node_type, spec in cluster["available_node_types"].items():
        count = 1 if node_type == cluster["head_node_type"] else spec["min_workers"]
        total += count * spec["resources"]["GPU"]
    assert total == gpus
    assert load_config(REPO / config).scaling.num_workers == gpus
    assert cluster["max_workers"] == sum(spec.get("max_workers", 0) for spec in cluster["available_node_types"].values())
    assert "llmft" in cluster["docker"]["image"]
    head_start = " ".join(cluster["head_start_ray_commands"])
    # The dashboard (Jobs API) is never opened to the network: it is reached through `ray dashboard`.
    assert "--dashboard-host=127.0.0.1" in head_start
    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "RAY_AUTH_MODE=token" in " ".join(cluster[commands])
    assert "~/.ray/auth_token" in cluster["file_mounts"]


def test_kuberay_rayjob_runs_the_7b_config_on_the_llmft_image_with_token_auth():
    from llmft.config import load_config

    documents = [d for d in yaml.safe_load_all((DOCKER / "kuberay-rayjob.yaml").read_text()) if d]
    job = next(d for d in documents if d["kind"] == "RayJob")
    entrypoint = shlex.split(job["spec"]["entrypoint"])
    assert entrypoint[:3] == ["llmft", "train", "configs/viggo/llama-2-7b.yaml"]
    # The overrides in the manifest must be valid for the config they modify.
    load_config(REPO / entrypoint[2], entrypoint[3:])
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == _pins()["ray"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]]
    assert all("llmft" in c["image"] for c in containers)
    gpus = sum(int(g["replicas"]) * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
               for g in cluster["workerGroupSpecs"])
    assert gpus == load_config(REPO / "configs/viggo/llama-2-7b.yaml").scaling.num_workers
