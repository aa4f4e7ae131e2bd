"""`llmft submit` without a cluster: the job request built from a config and what the working-dir
upload leaves out.

What these catch: a config error that is only found after uploading; secrets printed or sent when
unset; models, checkpoints or outputs uploaded with the working directory; a .rayignore that
drifts from the excludes `llmft submit` uses."""

from __future__ import annotations

import re
import shlex
import zipfile
from pathlib import Path

import pytest

from llmft.errors import LlmftError
from llmft.launch.submit import (
    DEFAULT_EXCLUDES,
    PASSTHROUGH_ENV,
    build_job_request,
    submit_job,
    upload_filter,
)
from tests.support import REPO, closed_port

DOCKER = REPO / "docker"

KEPT = {"configs/run.yaml", "llmft_extra/mod.py", "data/train.jsonl"}


def test_request_runs_llmft_train_on_the_uploaded_config_with_quoted_overrides():
    request = build_job_request("configs/viggo/tiny-cpu.yaml",
                                ["model.name_or_path=/models/tiny", "output.run_name=a b"], workdir=REPO)
    assert shlex.split(request.entrypoint) == ["llmft", "train", "configs/viggo/tiny-cpu.yaml",
                                               "model.name_or_path=/models/tiny", "output.run_name=a b"]
    assert request.runtime_env["working_dir"] == str(REPO)
    assert set(DEFAULT_EXCLUDES) <= set(request.runtime_env["excludes"])
    assert request.metadata["llmft_config"] == "configs/viggo/tiny-cpu.yaml"
    assert re.fullmatch(r"llmft-viggo-tiny-cpu-\d{8}-\d{6}-[0-9a-f]{4}", request.submission_id)


def test_resume_is_passed_on_to_llmft_train():
    request = build_job_request("configs/viggo/tiny-cpu.yaml", ["model.name_or_path=/models/tiny"], workdir=REPO,
                                resume="latest")
    assert shlex.split(request.entrypoint)[-3:] == ["model.name_or_path=/models/tiny", "--resume", "latest"]


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
                   address=f"http://127.0.0.1:{closed_port()}", follow=False)
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
