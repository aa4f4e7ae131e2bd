"""`llmft submit` / `llmft jobs` without a cluster: addresses, fail-fast connections, the job
request built from a config, what the working-dir upload leaves out, and the docker/ files.

What these catch: a config error that is only found after uploading; an address that hangs
instead of failing; `--address` silently overridden by $RAY_ADDRESS; secrets printed or sent
when unset; models, checkpoints or outputs uploaded with the working directory; a .rayignore
that drifts from the excludes `llmft submit` uses; Docker/cluster/KubeRay files that disagree
with pyproject's pins or with the configs they launch.
"""

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
