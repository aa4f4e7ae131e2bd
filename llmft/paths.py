"""Paths in a config made absolute on the driver, before they travel to workers on other nodes."""

from __future__ import annotations

from pathlib import Path

from llmft.config import Config
from llmft.storage import is_uri


def absolute_paths(cfg: Config) -> Config:
    """Resolve relative paths against the driver's working directory: workers run elsewhere."""
    def absolute(value: str | None) -> str | None:
        if value is None or is_uri(value):
            return value
        path = Path(value).expanduser()
        return str(path.resolve()) if path.exists() or value.startswith((".", "/", "~")) else value

    model = cfg.model.model_copy(update={"name_or_path": absolute(cfg.model.name_or_path),
                                         "tokenizer": absolute(cfg.model.tokenizer)})
    data = cfg.data.model_copy(update={key: absolute(getattr(cfg.data, key)) for key in ("train", "valid", "test")}
                               | {"cache_dir": str(Path(cfg.data.cache_dir).expanduser().resolve())})
    output = cfg.output.model_copy(update={"dir": cfg.output.dir if is_uri(cfg.output.dir)
                                           else str(Path(cfg.output.dir).expanduser().resolve())})
    ds = cfg.deepspeed.model_copy(update={"config_file": absolute(cfg.deepspeed.config_file)})
    tracking = cfg.logging.mlflow_tracking_uri
    if tracking and "://" not in tracking and not tracking.startswith("file:"):  # a folder, e.g. ./mlruns
        tracking = str(Path(tracking).expanduser().resolve())
    logging = cfg.logging.model_copy(update={"mlflow_tracking_uri": tracking})
    return cfg.model_copy(update={"model": model, "data": data, "output": output, "deepspeed": ds, "logging": logging})
