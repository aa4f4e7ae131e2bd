"""Fixtures of the end-to-end tests."""

from tests.support.distributed import single_process_group  # noqa: F401 (a fixture)
