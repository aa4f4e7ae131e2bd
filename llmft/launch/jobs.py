"""The job lifecycle on a Ray cluster: connect, list, status, logs (followed or not), stop.

Everything goes through Ray's Job Submission SDK (`ray.job_submission.JobSubmissionClient`,
from `ray[default]`) talking to the head's dashboard address, e.g. http://HEAD:8265.

- Address: the `--address` argument, else `$RAY_API_SERVER_ADDRESS` (Ray's name for the Jobs
  API address), else `$RAY_ADDRESS`, else an error saying how to set one. A bare `host:port`
  gets `http://`; a bare host gets port 8265.
- Reachability: a TCP connect and one HTTP request with timeouts (5 s, 10 s) run before the SDK,
  whose own HTTP calls have no timeout, so a wrong or firewalled address fails in seconds
  instead of hanging.
- Token auth (on by default for heads started with `ray start` in Ray 2.60): the token is
  found the way Ray finds it —
  `$RAY_AUTH_TOKEN`, the file at `$RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token` — and sent as
  an Authorization header even when `RAY_AUTH_MODE` is unset in this shell (the same rule
  `ray.init` follows: a token that exists is used). `RAY_AUTH_MODE=disabled` sends none. The
  token is never printed.
- Exit statuses of a followed job (`llmft submit --follow`, `llmft jobs logs --follow`):
  0 SUCCEEDED, 1 FAILED, 130 STOPPED (like a command ended by Ctrl-C; also used when you press
  Ctrl-C while following: the job itself keeps running). Unknown job id: `LlmftError`, exit 2.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import sys
import time
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

import click

from llmft.errors import LlmftError

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

DEFAULT_DASHBOARD_PORT = 8265
CONNECT_TIMEOUT_S = 5.0
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 130}
INTERRUPTED_EXIT_CODE = 130
_API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"  # Ray's own name for the Jobs API address


# ---------------------------------------------------------------- connecting


def resolve_address(address: str | None) -> str:
    """The dashboard URL: the argument, else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS.

    A bare host:port gets http://, a bare host also port 8265.
    """
    raw = (address or os.environ.get(_API_SERVER_ENV) or os.environ.get("RAY_ADDRESS") or "").strip()
    if not raw:
        raise LlmftError(
            "No Ray cluster address: pass --address http://HEAD:8265 (the head node's dashboard "
            "address) or set RAY_ADDRESS to it. To try llmft on this machine, start a loopback-only "
            "head as docker/README.md shows (\"Trying it on one machine\") and use http://127.0.0.1:8265."
        )
    if "://" not in raw:
        host_port = raw.rstrip("/")
        if ":" not in host_port:
            host_port = f"{host_port}:{DEFAULT_DASHBOARD_PORT}"
        return f"http://{host_port}"
    scheme = raw.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise LlmftError(
            f"Ray address {raw!r} is not a dashboard address. Ray jobs are submitted to the head "
            f"node's dashboard, e.g. http://HEAD:8265 (not a ray:// client address or the GCS "
            f"port 6379). Pass it with --address or RAY_ADDRESS."
        )
    return raw.rstrip("/")


def job_client(address: str | None) -> "JobSubmissionClient":
    """A Job Submission client for the cluster, or a clear `LlmftError` within a few seconds."""
    url = resolve_address(address)
    headers = auth_headers()
    _check_reachable(url)
    _check_jobs_api(url, headers)
    from ray.job_submission import JobSubmissionClient

    # Ray lets $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS override the address argument; pinning the
    # first for the constructor makes --address win, as a command-line option should.
    saved = os.environ.get(_API_SERVER_ENV)
    os.environ[_API_SERVER_ENV] = url
    try:
        return JobSubmissionClient(url, headers=headers)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise LlmftError(_not_a_jobs_api(url, _first_line(exc))) from None
    finally:
        if saved is None:
            os.environ.pop(_API_SERVER_ENV, None)
        else:
            os.environ[_API_SERVER_ENV] = saved


def auth_headers() -> dict[str, str]:
    """{'authorization': 'Bearer …'} when a Ray token exists (and auth isn't disabled), else {}."""
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
        return {}
    try:
        from ray._raylet import AuthenticationTokenLoader
        from ray.exceptions import AuthenticationError
    except ImportError:  # Ray < 2.52 has no token auth
        return {}

    loader = AuthenticationTokenLoader.instance()
    # The loader caches; the environment may have changed since (e.g. another RAY_AUTH_TOKEN_PATH).
    loader.reset_cache()
    try:
        return dict(loader.get_token_for_http_header(ignore_auth_mode=True) or {})
    except AuthenticationError as exc:  # e.g. RAY_AUTH_TOKEN_PATH names a missing file
        raise LlmftError(f"Cannot load the Ray authentication token: {_first_line(exc)} Point "
                         f"RAY_AUTH_TOKEN_PATH at the cluster's token file, or unset it.") from None


def _check_reachable(url: str) -> None:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise LlmftError(
            f"Cannot reach the Ray dashboard at {url} ({reason} after at most "
            f"{CONNECT_TIMEOUT_S:.0f} s). Check the address (the head node's dashboard, usually "
            f"http://HEAD:8265), that the cluster is up, and that the port is reachable from here; "
            f"for a cluster made with `ray up`, `ray dashboard CLUSTER.yaml` forwards it to "
            f"http://127.0.0.1:8265."
        ) from None


def _check_jobs_api(url: str, headers: dict[str, str]) -> None:
    # The SDK's requests have no timeout: one bounded request first turns a port that accepts
    # connections but never answers (or answers as something else) into a prompt, clear error.
    import requests

    try:
        response = requests.get(f"{url}/api/version", headers=headers,
                                timeout=(CONNECT_TIMEOUT_S, 2 * CONNECT_TIMEOUT_S))
    except requests.RequestException as exc:
        raise LlmftError(_not_a_jobs_api(url, _first_line(exc))) from None
    if response.status_code in (401, 403):
        raise LlmftError(_auth_advice(url, response.status_code))
    try:
        ok = response.status_code == 200 and "ray_version" in response.json()
    except ValueError:
        ok = False
    if not ok:
        raise LlmftError(_not_a_jobs_api(url, f"HTTP {response.status_code} from /api/version"))


def _not_a_jobs_api(url: str, detail: str) -> str:
    return (f"{url} did not answer as a Ray Jobs API ({detail}). Check that this is the head node's "
            f"dashboard address (default port 8265, not the GCS port 6379 or a ray:// client port) and "
            f"that the cluster's Ray includes the dashboard (`ray[default]`).")


def _auth_advice(url: str, status: int) -> str:
    if status == 403:
        problem = "rejected the Ray authentication token sent"
    else:
        problem = "requires a Ray authentication token and none was found"
    return (
        f"The Ray cluster at {url} {problem}. Set RAY_AUTH_TOKEN to the cluster's token, or "
        f"RAY_AUTH_TOKEN_PATH to a file holding it (`ray get-auth-token` on the head node prints "
        f"it; a head started on this machine wrote it to ~/.ray/auth_token)."
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# ---------------------------------------------------------------- one job


def get_job(client: "JobSubmissionClient", job_id: str) -> "JobDetails":
    """The job's details; an unknown id is an `LlmftError` (exit 2)."""
    try:
        return client.get_job_info(job_id)
    except RuntimeError as exc:
        if "status code 404" in str(exc):
            raise LlmftError(
                f"No job {job_id!r} on the Ray cluster at {client.get_address()}. "
                f"`llmft jobs list` shows the jobs it knows."
            ) from None
        raise


def exit_code(status: str) -> int:
    """The process exit status that stands for a finished job's status."""
    return EXIT_CODES.get(str(status), 1)


def follow_job(client: "JobSubmissionClient", job_id: str, out: TextIO | None = None) -> int:
    """Stream the job's logs to `out` until it ends; return its exit status (see module doc)."""
    out = out or sys.stdout
    get_job(client, job_id)
    try:
        printed, complete = asyncio.run(_tail_logs(client, job_id, out))
        status = _wait_until_done(client, job_id, out, printed if not complete else None)
    except KeyboardInterrupt:
        click.echo(f"\nStopped following; job {job_id} keeps running. "
                   f"Stop it with `llmft jobs stop {job_id}`.", err=True)
        return INTERRUPTED_EXIT_CODE
    info = get_job(client, job_id)
    click.echo(f"Job {job_id} {status}" + (f": {info.message}" if status != "SUCCEEDED" and info.message else ""),
               err=True)
    return exit_code(status)


async def _tail_logs(client: "JobSubmissionClient", job_id: str, out: TextIO) -> tuple[int, bool]:
    """Print log chunks as they come; return (characters printed, whether the stream ended cleanly)."""
    printed = 0
    try:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()
            printed += len(chunk)
    except Exception as exc:  # noqa: BLE001 - the websocket can drop; polling takes over
        click.echo(f"(log stream interrupted: {_first_line(exc)}; polling instead)", err=True)
        return printed, False
    return printed, True


def _wait_until_done(client: "JobSubmissionClient", job_id: str, out: TextIO, printed: int | None) -> str:
    """Poll until the status is final. `printed` given: the stream broke, so print the rest too."""
    # A cleanly closed stream means the driver exited, a moment before the status is final.
    while True:
        status = str(get_job(client, job_id).status)
        if printed is not None:
            logs = client.get_job_logs(job_id)
            if len(logs) > printed:
                out.write(logs[printed:])
                out.flush()
                printed = len(logs)
        if status in TERMINAL_STATUSES:
            return status
        time.sleep(1.0)


# ---------------------------------------------------------------- the CLI's commands


def list_jobs(address: str | None) -> None:
    """Print one line per job on the cluster, oldest first."""
    client = job_client(address)
    jobs = sorted(client.list_jobs(), key=lambda job: job.start_time or 0)
    if not jobs:
        click.echo(f"No jobs on {client.get_address()}.")
        return
    rows = [(_job_name(job), str(job.status), _when(job.start_time), _duration(job), job.entrypoint)
            for job in jobs]
    header = ("ID", "STATUS", "STARTED", "DURATION", "ENTRYPOINT")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths)]
        click.echo("  ".join([*cells, _shorten(row[4], 80)]))


def show_status(job_id: str, address: str | None) -> None:
    """Print a job's status, message, entrypoint and times (never its runtime env: it holds secrets)."""
    client = job_client(address)
    job = get_job(client, job_id)
    fields = [
        ("job", _job_name(job)),
        ("status", str(job.status)),
        ("message", job.message or ""),
        ("entrypoint", job.entrypoint),
        ("config", (job.metadata or {}).get("llmft_config", "")),
        ("started", _when(job.start_time)),
        ("ended", _when(job.end_time)),
        ("duration", _duration(job)),
    ]
    if job.driver_exit_code is not None:
        fields.append(("exit code", str(job.driver_exit_code)))
    for name, value in fields:
        if value:
            click.echo(f"{name + ':':<12}{value}")


def show_logs(job_id: str, address: str | None, follow: bool = False) -> int:
    """Print the job's logs; with `follow`, stream until it ends and return its exit status."""
    client = job_client(address)
    if follow:
        return follow_job(client, job_id)
    get_job(client, job_id)
    click.echo(client.get_job_logs(job_id), nl=False)
    return 0


def stop_job(job_id: str, address: str | None, wait_s: float = 30.0) -> None:
    """Ask Ray to stop the job (SIGTERM, then SIGKILL) and report how it ended."""
    client = job_client(address)
    job = get_job(client, job_id)
    if str(job.status) in TERMINAL_STATUSES:
        click.echo(f"Job {job_id} already ended: {job.status}.")
        return
    client.stop_job(job_id)
    deadline = time.monotonic() + wait_s
    status = str(job.status)
    while time.monotonic() < deadline:
        status = str(get_job(client, job_id).status)
        if status in TERMINAL_STATUSES:
            click.echo(f"Job {job_id} {status}.")
            return
        time.sleep(0.5)
    click.echo(f"Stop requested for job {job_id}; it is still {status}. "
               f"Check with `llmft jobs status {job_id}`.")


# ---------------------------------------------------------------- formatting


def _job_name(job: "JobDetails") -> str:
    return job.submission_id or job.job_id or "?"


def _when(epoch_ms: int | None) -> str:
    if not epoch_ms:
        return ""
    return dt.datetime.fromtimestamp(epoch_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _duration(job: "JobDetails") -> str:
    if not job.start_time:
        return ""
    end_ms = job.end_time or time.time() * 1000
    seconds = max(0, int((end_ms - job.start_time) / 1000))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
