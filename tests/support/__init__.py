"""Test infrastructure shared by the unit and e2e tests."""

import json
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODEL_CONFIG_FIXTURES = REPO / "tests" / "fixtures" / "model_configs"


def fixture_model_config(name: str) -> dict:
    """A real model's config.json kept under tests/fixtures (llama-2-7b/13b/70b, smollm2-135m)."""
    return json.loads((MODEL_CONFIG_FIXTURES / name / "config.json").read_text())


def closed_port() -> int:
    """A loopback port nothing listens on (just released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def model_config(name_or_path, task: str = "viggo", **model):
    """A one-worker Config naming a model (and its task's sample data), for tests that load it."""
    from llmft.config import Config

    return Config.model_validate({
        "model": {"name_or_path": str(name_or_path), **model},
        "data": {"task": task, "train": f"sample:{task}@train"},
        "scaling": {"num_workers": 1}, "training": {"global_batch_size": 1},
        "source": "configs/test.yaml",
    })
