"""Which cluster a command runs on, and failing in seconds when it cannot (no Ray started here)."""

from __future__ import annotations

import socket

import pytest
import ray

from llmft.cluster import check_placement, check_reachable, join_cluster
from llmft.config import Config
from llmft.errors import LlmftError
from tests.support import closed_port


def config(**scaling) -> Config:
    return Config.model_validate({"model": {"name_or_path": "m"}, "data": {"task": "viggo", "train": "t.jsonl"},
                                  "training": {"global_batch_size": 16}, "scaling": scaling})


def test_missing_resources_are_named(monkeypatch):
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0, "GPU": 2.0})
    check_placement(config(num_workers=4))
    with pytest.raises(LlmftError, match=r"CPU: needs 8, cluster has 4"):
        check_placement(config(num_workers=4, cpus_per_worker=2))
    with pytest.raises(LlmftError, match=r"GPU: needs 4, cluster has 2"):
        check_placement(config(num_workers=4, use_gpu=True))
    with pytest.raises(LlmftError, match=r"accelerator_type:A10G: needs 0.04, cluster has 0"):
        check_placement(config(num_workers=4, resources_per_worker={"accelerator_type:A10G": 0.01}))


def test_a_named_address_that_does_not_answer_is_a_user_error(monkeypatch):
    """Ray itself retries an unreachable GCS for many minutes; llmft says so before calling it."""
    def hangs(**kwargs):
        raise AssertionError("ray.init reached: it would retry the dead address for minutes")

    monkeypatch.setattr(ray, "init", hangs)
    port = closed_port()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(LlmftError, match=rf"No Ray cluster answers at {address}"):
            join_cluster(address)
    with pytest.raises(LlmftError, match="not of the form HOST:PORT"):
        join_cluster("head-node")
    with pytest.raises(LlmftError, match="dashboard.*llmft submit"):
        join_cluster("http://127.0.0.1:8265")


def test_an_address_that_answers_passes_the_check():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
