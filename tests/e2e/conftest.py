"""Fixtures of the end-to-end tests."""

import pytest

from tests.support.distributed import _rank_variables, single_process_group  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def ray_session():
    """One embedded Ray for a test module, started as `llmft train` starts its own (loopback only,
    its address handed to every process of the job), so the runs of the module share it."""
    import ray

    from llmft.cluster import start_embedded_cluster

    start_embedded_cluster()
    yield
    ray.shutdown()
