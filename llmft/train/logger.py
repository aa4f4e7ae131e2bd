"""Where rank 0 writes metrics: a JSONL file per run, a progress line, TensorBoard and MLflow."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from llmft import storage
from llmft.config import Config
from llmft.files import write_text_atomic

# How often metrics written to a bucket are uploaded while the run goes on (and at every checkpoint).
UPLOAD_EVERY_S = 30.0


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The run's metrics file (in a local folder or a storage URI) as a list of records."""
    text = storage.read_text(storage.join(str(run_dir), "metrics.jsonl"))
    return [json.loads(line) for line in text.splitlines() if line]


class MetricsLogger:
    """Appends one JSON object per logged step to `<run_dir>/metrics.jsonl`.

    On a resume the lines after the restored step are dropped first, so the file shows each step
    once, as it was finally trained. An object store cannot append: for a run in a bucket the
    file (and TensorBoard's) is written on this node and uploaded whole by `sync`, which the loop
    calls before every checkpoint, so a checkpoint never lies ahead of its metrics.
    """

    def __init__(self, cfg: Config, *, run_dir: str, enabled: bool, total_steps: int, resumed_at: int):
        self.enabled, self.total_steps, self.started = enabled, total_steps, time.time()
        self.show_progress = cfg.logging.progress_bar
        self.tensorboard = self.mlflow = None
        if not enabled:
            return
        self.run_dir, self.remote = run_dir, storage.is_uri(run_dir)
        local_dir = Path(tempfile.mkdtemp(prefix="llmft-metrics-")) if self.remote else Path(run_dir)
        self.path = local_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.remote and storage.exists(storage.join(run_dir, "metrics.jsonl")):
            self.path.write_text(storage.read_text(storage.join(run_dir, "metrics.jsonl")))
        _truncate_after(self.path, resumed_at)
        self.file = self.path.open("a")
        self.synced = time.monotonic()
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(local_dir / "tensorboard"))
        if cfg.logging.mlflow_tracking_uri:
            import mlflow

            if "://" not in cfg.logging.mlflow_tracking_uri or cfg.logging.mlflow_tracking_uri.startswith("file:"):
                # A folder: MLflow 3 keeps its file store only in maintenance mode and refuses it
                # unless this is set; the user asked for a folder, so honour it.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri(cfg.logging.mlflow_tracking_uri)
            mlflow.start_run(run_name=storage.basename(run_dir))
            mlflow.log_params({k: str(v) for k, v in cfg.dotted_values.items()})
            self.mlflow = mlflow

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: v for k, v in metrics.items() if v is not None and k != "step"}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tensorboard:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(key, value, step)
        if self.mlflow:
            self.mlflow.log_metrics({k: float(v) for k, v in numbers.items()}, step=step)
        if self.show_progress:
            print(progress_line(step, self.total_steps, record, time.time() - self.started), flush=True)
        if self.remote and time.monotonic() - self.synced > UPLOAD_EVERY_S:
            self.sync()

    def sync(self) -> None:
        """Upload the metrics (and TensorBoard files) of a run in a bucket; nothing to do on disk."""
        if not (self.enabled and self.remote):
            return
        self.file.flush()
        storage.upload_file(self.path, storage.join(self.run_dir, "metrics.jsonl"))
        if self.tensorboard:
            self.tensorboard.flush()
            for event_file in (self.path.parent / "tensorboard").iterdir():
                storage.upload_file(event_file, storage.join(self.run_dir, "tensorboard", event_file.name))
        self.synced = time.monotonic()

    def write_json(self, name: str, value: Any) -> None:
        """A JSON file beside metrics.jsonl (rank 0 only), e.g. the engine DeepSpeed built."""
        if not self.enabled:
            return
        local = self.path.parent / name
        write_text_atomic(local, json.dumps(value, indent=2) + "\n")
        if self.remote:
            storage.upload_file(local, storage.join(self.run_dir, name))

    def close(self) -> None:
        if not self.enabled:
            return
        self.sync()
        self.file.close()
        if self.tensorboard:
            self.tensorboard.close()
        if self.mlflow:
            self.mlflow.end_run()
        if self.remote:
            shutil.rmtree(self.path.parent, ignore_errors=True)


def progress_line(step: int, total: int, record: dict[str, Any], elapsed: float) -> str:
    done = step / max(total, 1)
    bar = "#" * int(20 * done) + "-" * (20 - int(20 * done))
    parts = [f"[{bar}] step {step}/{total}"]
    for key, fmt in (("train_loss", "loss {:.4f}"), ("valid_loss", "valid_loss {:.4f}"),
                     ("train_token_accuracy", "acc {:.3f}"), ("lr", "lr {:.2e}"),
                     ("trained_tokens_per_second", "{:,.0f} trained tok/s")):
        if isinstance(record.get(key), (int, float)) and math.isfinite(record[key]):
            parts.append(fmt.format(record[key]))
    return " | ".join(parts) + f" | {elapsed:.0f}s"


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))
