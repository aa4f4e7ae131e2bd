"""Tests for llmft.models: tokenizers, task tokens, mean init, the tiny Llama and error messages.

The tiny model is built once per module (about a second); GGUF import and ZeRO-3 loading are in
tests/e2e/test_models_e2e.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

MARKER_TASKS = ("viggo", "sql", "gsm8k")


@pytest.fixture
def tiny_dir(tiny_model_dir: Path) -> Path:
    """The session's tiny Llama (tests/conftest.py), made by `make_tiny_llama` with its defaults."""
    return tiny_model_dir
