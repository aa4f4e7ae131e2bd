"""Fixtures shared by the e2e tests."""

from tests.support.distributed import single_process_group  # noqa: F401 (a fixture)
