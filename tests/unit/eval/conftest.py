"""Fixtures of the data tests."""

from tests.support.tiny_tokenizer import tiny_tokenizer  # noqa: F401 (a fixture)
