"""`llmft submit` / `llmft jobs` without a cluster: addresses, fail-fast connections, the job
request built from a config, what the working-dir upload leaves out, and the docker/ files.

What these catch: a config error that is only found after uploading; an address that hangs
instead of failing; `--address` silently overridden by $RAY_ADDRESS; secrets printed or sent
when unset; models, checkpoints or outputs uploaded with the working directory; a .rayignore
that drifts from the excludes `llmft submit` uses; Docker/cluster/KubeRay files that disagree
with pyproject's pins or with the configs they launch.
"""

from __future__ import annotations

import re
import shlex
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from llmft.errors import LlmftError
from llmft.launch import jobs
from llmft.launch.submit import (
    DEFAULT_EXCLUDES,
    PASSTHROUGH_ENV,
    build_job_request,
    submit_job,
    upload_filter,
)

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


@pytest.fixture(autouse=True)
def _clean_ray_env(monkeypatch):
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                 *PASSTHROUGH_ENV):
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------- addresses and connecting


def test_address_comes_from_the_argument_then_the_environment(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://from-ray-address:8265")
    assert jobs.resolve_address("http://given:9000/") == "http://given:9000"
    assert jobs.resolve_address(None) == "http://from-ray-address:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "https://api.example.com")
    assert jobs.resolve_address(None) == "https://api.example.com"


def test_bare_hosts_get_http_and_the_dashboard_port():
    assert jobs.resolve_address("10.0.0.5") == "http://10.0.0.5:8265"
    assert jobs.resolve_address("10.0.0.5:9999") == "http://10.0.0.5:9999"


@pytest.mark.parametrize("address", ["ray://head:10001", "auto://x"])
def test_non_dashboard_addresses_are_refused(address):
    with pytest.raises(LlmftError, match="dashboard"):
        jobs.resolve_address(address)


def test_no_address_says_how_to_give_one():
    with pytest.raises(LlmftError, match="--address") as info:
        jobs.connect(None)
    assert "RAY_ADDRESS" in str(info.value)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nothing_listening_fails_at_once():
    started = time.monotonic()
    with pytest.raises(LlmftError, match="Cannot reach the Ray dashboard"):
        jobs.connect(f"http://127.0.0.1:{_closed_port()}")
    assert time.monotonic() - started < 3


def test_a_port_that_never_answers_fails_within_the_timeout(monkeypatch):
    monkeypatch.setattr(jobs, "CONNECT_TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # accepts connections (backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        with pytest.raises(LlmftError, match="did not answer as a Ray Jobs API"):
            jobs.connect(f"http://127.0.0.1:{silent.getsockname()[1]}")
    assert time.monotonic() - started < 5


def test_a_web_server_that_is_not_ray_is_named_as_such():
    class NotRay(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), NotRay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(LlmftError, match="HTTP 404") as info:
            jobs.connect(f"127.0.0.1:{server.server_address[1]}")
        assert "8265" in str(info.value)
    finally:
        server.shutdown()


def test_token_is_read_the_way_ray_reads_it_and_disabled_sends_none(monkeypatch, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("secret-token-value\n")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token from the real home
    assert jobs.auth_headers() == {}
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert jobs.auth_headers() == {"authorization": "Bearer secret-token-value"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert jobs.auth_headers() == {}


def test_exit_codes_of_finished_jobs():
    assert [jobs.exit_code(s) for s in ("SUCCEEDED", "FAILED", "STOPPED")] == [0, 1, 130]
    assert jobs.exit_code("SOMETHING_NEW") == 1


# ---------------------------------------------------------------- the job request


def test_request_runs_llmft_train_on_the_uploaded_config_with_quoted_overrides():
    request = build_job_request("configs/viggo/tiny-cpu.yaml",
                                ["model.name_or_path=/models/tiny", "output.run_name=a b"], workdir=REPO)
    assert shlex.split(request.entrypoint) == ["llmft", "train", "configs/viggo/tiny-cpu.yaml",
                                               "model.name_or_path=/models/tiny", "output.run_name=a b"]
    assert request.runtime_env["working_dir"] == str(REPO)
    assert set(DEFAULT_EXCLUDES) <= set(request.runtime_env["excludes"])
    assert request.metadata["llmft_config"] == "configs/viggo/tiny-cpu.yaml"
    assert re.fullmatch(r"llmft-viggo-tiny-cpu-\d{8}-\d{6}-[0-9a-f]{4}", request.submission_id)


def test_absolute_config_inside_the_working_dir_becomes_relative():
    request = build_job_request(str(REPO / "configs/viggo/llama-2-7b.yaml"), workdir=REPO)
    assert shlex.split(request.entrypoint)[2] == "configs/viggo/llama-2-7b.yaml"


def test_config_outside_the_working_dir_is_refused(tmp_path):
    outside = tmp_path / "c.yaml"
    outside.write_text((REPO / "configs/viggo/tiny-cpu.yaml").read_text())
    with pytest.raises(LlmftError, match="inside the directory you submit from"):
        build_job_request(str(outside), workdir=REPO)


def test_bad_config_fails_before_any_connection(monkeypatch):
    # The address is unreachable: the config error must come first, i.e. nothing was sent.
    monkeypatch.chdir(REPO)
    with pytest.raises(LlmftError, match="learning_rat") as info:
        submit_job("configs/viggo/tiny-cpu.yaml", ["training.learning_rat=1"],
                   address=f"http://127.0.0.1:{_closed_port()}", follow=False)
    assert "Cannot reach" not in str(info.value)


def test_model_in_an_excluded_folder_is_refused_naming_the_key():
    # tiny-cpu.yaml points at .cache/tiny-llama, which never travels with the working dir.
    with pytest.raises(LlmftError, match=r"model\.name_or_path.*\.cache/tiny-llama"):
        build_job_request("configs/viggo/tiny-cpu.yaml", workdir=REPO)
    build_job_request("configs/viggo/tiny-cpu.yaml", ["model.name_or_path=/shared/tiny"], workdir=REPO)
    build_job_request("configs/viggo/tiny-cpu.yaml", ["model.name_or_path=meta-llama/Llama-2-7b-hf"], workdir=REPO)


def test_relative_output_dir_warns_and_shared_storage_does_not():
    common = ["model.name_or_path=/shared/tiny"]
    relative = build_job_request("configs/viggo/tiny-cpu.yaml", common, workdir=REPO)
    assert any("output.dir" in w for w in relative.warnings)
    for out in ("s3://bucket/runs", "/mnt/shared/runs"):
        assert build_job_request("configs/viggo/tiny-cpu.yaml", [*common, f"output.dir={out}"],
                                 workdir=REPO).warnings == []


def test_only_set_environment_variables_pass_and_the_request_repr_hides_them():
    environ = {"HF_TOKEN": "hf_secret_value", "WANDB_API_KEY": "", "UNRELATED": "x"}
    request = build_job_request("configs/viggo/llama-2-7b.yaml", workdir=REPO, environ=environ)
    env_vars = request.runtime_env["env_vars"]
    assert env_vars["HF_TOKEN"] == "hf_secret_value"
    assert "WANDB_API_KEY" not in env_vars and "UNRELATED" not in env_vars
    assert "RAY_AUTH_TOKEN" not in PASSTHROUGH_ENV
    assert "hf_secret_value" not in repr(request)


# ---------------------------------------------------------------- what travels


def _project(tmp_path: Path) -> Path:
    files = {
        "configs/run.yaml": "x", "llmft_extra/mod.py": "x", "data/train.jsonl": "{}",
        "outputs/run/checkpoint_000001/llmft_state.json": "{}", ".cache/tiny-llama/config.json": "{}",
        "models/model.safetensors": "w", "pytorch_model.bin": "w", "sub/__pycache__/m.cpython-311.pyc": "x",
        ".git/HEAD": "ref", "data/cache/train.arrow": "x", "wandb/run/log": "x", "model.gguf": "w",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


KEPT = {"configs/run.yaml", "llmft_extra/mod.py", "data/train.jsonl"}


def test_rays_own_packager_leaves_out_models_caches_and_outputs(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    project = _project(tmp_path / "project")
    target = tmp_path / "pkg.zip"
    create_package(str(project), target, include_gitignore=True, excludes=list(DEFAULT_EXCLUDES))
    with zipfile.ZipFile(target) as archive:
        uploaded = {name for name in archive.namelist() if not name.endswith("/")}
    assert uploaded == KEPT


def test_upload_filter_agrees_with_the_packager(tmp_path):
    project = _project(tmp_path)
    excluded = upload_filter(project, environ={})
    files = {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()}
    assert {f for f in files if not excluded(Path(f))} == KEPT


def test_rayignore_lists_every_builtin_exclude_and_ray_reads_it(tmp_path):
    patterns = {line.strip() for line in (REPO / ".rayignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert set(DEFAULT_EXCLUDES) <= patterns
    # With only .rayignore (no llmft excludes), plain `ray job submit --working-dir .` leaves out the same.
    project = _project(tmp_path / "project")
    (project / ".rayignore").write_text((REPO / ".rayignore").read_text())
    excluded = upload_filter(project, environ={})
    from llmft.launch import submit

    original = submit.DEFAULT_EXCLUDES
    try:
        submit.DEFAULT_EXCLUDES = ()
        only_rayignore = submit.upload_filter(project, environ={})
    finally:
        submit.DEFAULT_EXCLUDES = original
    files = {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()} - {".rayignore"}
    assert {f for f in files if not only_rayignore(Path(f))} == KEPT
    assert {f for f in files if not excluded(Path(f))} == KEPT


# ---------------------------------------------------------------- docker/ and cluster files


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


def test_a_token_path_that_does_not_exist_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(LlmftError, match="RAY_AUTH_TOKEN_PATH"):
        jobs.connect("http://127.0.0.1:8265")
