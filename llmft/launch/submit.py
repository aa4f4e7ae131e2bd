"""`llmft submit`: run `llmft train CONFIG overrides...` as a Ray job on a cluster.

What is sent, and why:
- The config is loaded and validated here first (`load_config`), so a bad config fails before
  anything is uploaded.
- `working_dir` is the current directory: Ray zips it (minus `DEFAULT_EXCLUDES`, `.rayignore`
  and `.gitignore`), unpacks it on every node, makes it the job's cwd and puts it first on
  PYTHONPATH for the entrypoint and every Ray worker. Relative paths in the config therefore
  mean the same on the cluster as here, and a checkout of llmft submits its own source.
- How llmft gets onto the cluster: the cluster image has llmft and its pinned dependencies
  installed (docker/Dockerfile), which provides the `llmft` command and torch/DeepSpeed with
  prebuilt ops. Installing them per job with a runtime_env `pip` list would rebuild a
  multi-GB environment on every node for every job, and `pip install -e .` of the working dir
  is not something a runtime_env can do; the uploaded source on PYTHONPATH shadows the
  installed package, so code changes travel with each submission without a rebuild.
- Environment variables in `PASSTHROUGH_ENV` (and llmft's own `LLMFT_*` test switches) are
  passed only when set here. Their values are never printed (only their names); note that Ray
  keeps a job's runtime_env, env vars included, in the job's record, readable by whoever can
  reach the dashboard with the token.

The exit status is that of `llmft.launch.jobs` (0 SUCCEEDED, 1 FAILED, 130 STOPPED) when
following, else 0 once the job is accepted.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import secrets
import shlex
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import click

from llmft.errors import LlmftError

# Never uploaded, whatever the project's own ignore files say. Keep in sync with .rayignore
# (which plain `ray job submit --working-dir .` reads); a unit test checks that it is.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git/",
    "outputs/",
    ".cache/",
    "__pycache__/",
    "*.pyc",
    ".pytest_cache/",
    "*.egg-info/",
    ".venv/",
    "venv/",
    "wandb/",
    "mlruns/",
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.gguf",
    "*.arrow",
)

# Names only; values are read at submit time and never echoed.
PASSTHROUGH_ENV: tuple[str, ...] = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HOME",
    "HF_ENDPOINT",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "WANDB_API_KEY",
    "WANDB_PROJECT",
    "WANDB_ENTITY",
    "WANDB_MODE",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)

# Config keys that may name a local file or folder, which must then travel with the working dir.
_PATH_KEYS = ("model.name_or_path", "model.tokenizer", "data.train", "data.valid", "data.test",
              "deepspeed.config_file")


@dataclass
class JobRequest:
    """Everything `JobSubmissionClient.submit_job` needs, plus notes for the user."""

    entrypoint: str
    runtime_env: dict = field(repr=False)  # holds passed-through secrets: keep it out of reprs
    metadata: dict[str, str]
    submission_id: str
    warnings: list[str] = field(default_factory=list)

    @property
    def env_names(self) -> list[str]:
        return sorted(self.runtime_env.get("env_vars", {}))


def submit_job(config_path: str, overrides: list[str], address: str | None, follow: bool,
               resume: str | None = None) -> int:
    """Validate CONFIG locally, submit `llmft train CONFIG overrides... [--resume RESUME]`, print the job id.

    Returns 0 once submitted, or with `follow` the job's exit status (0 SUCCEEDED, 1 FAILED,
    130 STOPPED).
    """
    request = build_job_request(config_path, overrides, resume=resume)
    for warning in request.warnings:
        click.echo(textwrap.fill(f"warning: {warning}", width=100, break_long_words=False,
                                 break_on_hyphens=False), err=True)
    return submit_request(request, address=address, follow=follow)


def submit_entrypoint(entrypoint: str, address: str | None, follow: bool,
                      working_dir: str | Path | None = None, env_vars: Mapping[str, str] | None = None,
                      submission_id: str | None = None) -> int:
    """Submit any shell command as a Ray job (the plumbing of `submit_job`, without a config)."""
    runtime_env: dict = {}
    if working_dir is not None:
        runtime_env = {"working_dir": str(working_dir), "excludes": list(DEFAULT_EXCLUDES)}
    runtime_env["env_vars"] = {"PYTHONUNBUFFERED": "1", **(env_vars or {})}
    request = JobRequest(entrypoint=entrypoint, runtime_env=runtime_env, metadata={"job_name": entrypoint[:100]},
                         submission_id=submission_id or _submission_id("job"))
    return submit_request(request, address=address, follow=follow)


def submit_request(request: JobRequest, address: str | None, follow: bool) -> int:
    """Send a prepared request; print the id (stdout) and how to follow it (stderr)."""
    from llmft.launch import jobs

    client = jobs.job_client(address)
    if request.env_names:
        passed = [name for name in request.env_names if name != "PYTHONUNBUFFERED"]
        if passed:
            click.echo(f"Passing environment variables (values not shown): {', '.join(passed)}", err=True)
    try:
        job_id = client.submit_job(
            entrypoint=request.entrypoint,
            runtime_env=request.runtime_env,
            metadata=request.metadata,
            submission_id=request.submission_id,
        )
    except ValueError as exc:  # e.g. the working dir zip is over Ray's size limit
        raise LlmftError(f"Ray refused the job's runtime environment: {_redact(str(exc), request)}") from None
    except RuntimeError as exc:
        raise LlmftError(f"The Ray cluster at {client.get_address()} refused the job: "
                         f"{_redact(jobs._first_line(exc), request)}") from None
    click.echo(job_id)
    address_hint = f" --address {address}" if address else ""
    if not follow:
        click.echo(f"Submitted to {client.get_address()}. Follow with "
                   f"`llmft jobs logs {job_id} --follow{address_hint}`; stop with "
                   f"`llmft jobs stop {job_id}{address_hint}`.", err=True)
        return 0
    return jobs.follow_job(client, job_id)


def _redact(text: str, request: JobRequest) -> str:
    # A server error may echo the request back; passed-through values must not reach the terminal.
    for value in request.runtime_env.get("env_vars", {}).values():
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


def build_job_request(config_path: str, overrides: list[str] | tuple[str, ...] = (),
                      workdir: str | Path | None = None,
                      environ: Mapping[str, str] | None = None, resume: str | None = None) -> JobRequest:
    """Check the config and turn it into an entrypoint and runtime env. No network, no Ray.

    `resume` (`latest` or a checkpoint path or URI) is passed on as `llmft train --resume`."""
    from llmft.config import load_config

    workdir = Path(workdir or Path.cwd()).resolve()
    environ = os.environ if environ is None else environ
    config_file = Path(config_path)
    absolute = (config_file if config_file.is_absolute() else workdir / config_file).resolve()
    try:
        relative = absolute.relative_to(workdir)
    except ValueError:
        raise LlmftError(
            f"{config_path}: the config must lie inside the directory you submit from ({workdir}), "
            f"because that directory is what is uploaded to the cluster. Copy it there, or run "
            f"`llmft submit` from a directory that contains it."
        ) from None
    cfg = load_config(absolute, list(overrides))
    excluded = upload_filter(workdir, environ)
    if excluded(relative):
        raise LlmftError(f"{config_path}: this config lies in a path that is not uploaded with the working "
                         f"directory (see .rayignore / .gitignore); move it, e.g. to configs/.")
    values = cfg.dotted_values
    for key in _PATH_KEYS:
        value = values.get(key)
        if isinstance(value, str) and _is_relative_path(value) and excluded(Path(value)):
            raise LlmftError(
                f"{key}: {value!r} is a local path that is not uploaded with the working directory "
                f"(it matches .rayignore, .gitignore or llmft's built-in excludes), so the job would "
                f"not find it. Use a hub id, an absolute path on a filesystem every node shares, or "
                f"a path outside the excluded folders (override it: {key}=...)."
            )
    warnings = []
    output_dir = str(values.get("output.dir") or "")
    if output_dir and "://" not in output_dir and not Path(output_dir).is_absolute():
        warnings.append(
            f"output.dir is the relative path {output_dir!r}: on the cluster it lands inside the job's "
            f"temporary copy of the working directory on one node and is lost with it. Set "
            f"output.dir=s3://BUCKET/PATH (or gs://) or an absolute path on storage all nodes share."
        )
    env_vars = {"PYTHONUNBUFFERED": "1"}
    env_vars.update({name: environ[name] for name in PASSTHROUGH_ENV if environ.get(name)})
    # llmft's test switches (LLMFT_*) reach the job as `llmft train` hands them to its workers.
    env_vars.update({name: value for name, value in environ.items() if name.startswith("LLMFT_")})
    relative_posix = relative.as_posix()
    return JobRequest(
        entrypoint=shlex.join(["llmft", "train", relative_posix, *overrides, *(["--resume", resume] if resume else [])]),
        runtime_env={"working_dir": str(workdir), "excludes": list(DEFAULT_EXCLUDES), "env_vars": env_vars},
        metadata={"job_name": f"llmft train {relative_posix}", "llmft_config": relative_posix},
        submission_id=_submission_id(_slug(relative)),
        warnings=warnings,
    )


def upload_filter(workdir: Path, environ: Mapping[str, str] | None = None):
    """A predicate on paths relative to `workdir`: True when Ray would leave that path out."""
    from ray._private.runtime_env.packaging import _get_excludes, get_excludes_from_ignore_files

    environ = os.environ if environ is None else environ
    # Same switch Ray's uploader reads: RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1 disables .gitignore.
    include_gitignore = environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    matchers = [_get_excludes(workdir, list(DEFAULT_EXCLUDES)),
                *get_excludes_from_ignore_files(workdir, include_gitignore=include_gitignore,
                                                   logger=logging.getLogger(__name__))]

    def excluded(relative: Path) -> bool:
        # Ray skips a whole folder when the folder matches, so a parent match counts too.
        candidates = [workdir / relative, *[workdir / parent for parent in relative.parents if str(parent) != "."]]
        return any(match(path) for path in candidates for match in matchers)

    return excluded


def _is_relative_path(value: str) -> bool:
    # Hub ids ("owner/name") and `sample:` sources never match the exclude patterns, so they pass.
    return bool(value) and "://" not in value and not Path(value).is_absolute()


def _slug(relative: Path) -> str:
    parts = [*relative.parent.parts[-1:], relative.stem]
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")[:40] or "job"


def _submission_id(slug: str) -> str:
    # Readable in `llmft jobs list`, unique thanks to the time and a random suffix.
    return f"llmft-{slug}-{dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"

