"""`llmft jobs` without a cluster: addresses, fail-fast connections, token auth and exit codes.

What these catch: an address that hangs instead of failing; `--address` silently overridden by
$RAY_ADDRESS; a web server that is not Ray mistaken for one; a token sent when auth is off."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from llmft.errors import LlmftError
from llmft.launch import jobs
from tests.support import REPO, closed_port

DOCKER = REPO / "docker"

KEPT = {"configs/run.yaml", "llmft_extra/mod.py", "data/train.jsonl"}


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
        jobs.job_client(None)
    assert "RAY_ADDRESS" in str(info.value)


def test_nothing_listening_is_a_clear_error():
    with pytest.raises(LlmftError, match="Cannot reach the Ray dashboard"):
        jobs.job_client(f"http://127.0.0.1:{closed_port()}")


@pytest.mark.timeout(120)  # a hang guard, not a speed check: without the request's bound this never ends
def test_a_port_that_never_answers_fails_within_the_timeout(monkeypatch):
    monkeypatch.setattr(jobs, "CONNECT_TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # accepts connections (backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        with pytest.raises(LlmftError, match="did not answer as a Ray Jobs API"):
            jobs.job_client(f"http://127.0.0.1:{silent.getsockname()[1]}")


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
            jobs.job_client(f"127.0.0.1:{server.server_address[1]}")
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


def test_a_token_path_that_does_not_exist_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(LlmftError, match="RAY_AUTH_TOKEN_PATH"):
        jobs.job_client("http://127.0.0.1:8265")
