"""A real one-process torch.distributed group (gloo), as a Ray Train worker of a 1-worker run has,
for tests that drive DeepSpeed directly without Ray.

One group serves the whole test session: DeepSpeed keeps references to the group it first
saw, so a group destroyed and created again breaks every later DeepSpeed engine in the process.
Each test still gets the rank variables DeepSpeed reads when it builds an engine.
"""

from __future__ import annotations

import pytest

from tests.support import closed_port


@pytest.fixture(scope="session")
def _rank_variables():
    import deepspeed
    import torch.distributed as dist

    from llmft.train.loop import skip_shared_memory_comm

    variables = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(closed_port()),
                 "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_SIZE": "1"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in variables.items():
            patch.setenv(key, value)
        skip_shared_memory_comm()  # as llmft's workers do
        deepspeed.init_distributed(dist_backend="gloo")
    yield variables
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture
def single_process_group(_rank_variables, monkeypatch: pytest.MonkeyPatch):
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    for key, value in _rank_variables.items():
        monkeypatch.setenv(key, value)
    yield
    unset_hf_deepspeed_config()  # later loads in this process must not be partitioned
