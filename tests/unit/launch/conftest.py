"""Every launch test starts without RAY_ADDRESS or a Ray token in its environment."""

from __future__ import annotations

import pytest

from llmft.launch.submit import (
    PASSTHROUGH_ENV,
)
from tests.support import REPO

DOCKER = REPO / "docker"

KEPT = {"configs/run.yaml", "llmft_extra/mod.py", "data/train.jsonl"}


@pytest.fixture(autouse=True)
def _clean_ray_env(monkeypatch):
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                 *PASSTHROUGH_ENV):
        monkeypatch.delenv(name, raising=False)
