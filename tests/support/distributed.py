"""A real one-process gloo group, as a Ray Train worker with world size 1 has, for tests that run
DeepSpeed without Ray."""

from __future__ import annotations

import pytest

from tests.support import closed_port


@pytest.fixture
def single_process_group(monkeypatch: pytest.MonkeyPatch):
    import deepspeed
    import torch.distributed as dist
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(closed_port()),
                       "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    deepspeed.init_distributed(dist_backend="gloo")
    yield
    unset_hf_deepspeed_config()  # later loads in this process must not be partitioned
    if dist.is_initialized():
        dist.destroy_process_group()
