"""`llmft eval`: generate answers for a split, score them, write predictions and results.

The prompt is the task's own format (the one the model was fine-tuned on). `--few-shot K`
puts K formatted training examples before each prompt, the baseline the case study and
OpenAI's guide recommend measuring before fine-tuning. A base model that lacks the task's
marker tokens reads them as plain text and the stop marker is matched as text.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from llmft import storage
from llmft.cluster import init_ray, keep_embedded_ray_on_loopback
from llmft.config import Config
from llmft.errors import LlmftError
from llmft.paths import absolute_paths


def run_eval(cfg: Config, *, model: str | None, split: str, limit: int | None, few_shot: int,
             out: str | None, address: str | None, batch_size: int = 16) -> dict[str, Any]:
    keep_embedded_ray_on_loopback(address)
    from llmft.data.sources import source_fingerprint
    from llmft.eval.generate import generate_with_ray
    from llmft.eval.metrics import score_with_examples
    from llmft.eval.prompts import generation_inputs
    from llmft.models.tokenizer import load_tokenizer, task_stop_token
    from llmft.tasks import get_task
    from llmft.train.deepspeed import training_dtype

    # -- model and data (user errors surface here, before Ray starts)
    cfg = absolute_paths(cfg.model_copy(update={"model": cfg.model.model_copy(
        update={"name_or_path": model or cfg.model.name_or_path, "tokenizer": None})}))
    model_path = cfg.model.name_or_path
    out = out or str(Path("outputs/eval") / f"{cfg.data.task}-{storage.basename(model_path)}-{split}-{few_shot}shot.json")
    storage.check_reachable(out, "--out")
    tokenizer = load_tokenizer(cfg)
    task = get_task(cfg.data.task)
    if getattr(cfg.data, split) is None:
        raise LlmftError(f"data.{split} is not set in {cfg.source}; give the split's source or choose another --split.")
    inputs = generation_inputs(cfg, tokenizer, split, limit=limit, few_shot=few_shot)
    examples, prompts = inputs.examples, inputs.prompts
    references, contexts, max_new_tokens = inputs.references, inputs.contexts, inputs.max_new_tokens

    # -- generate on Ray workers, one model replica each
    init_ray(address)
    started = time.perf_counter()
    predictions = generate_with_ray(
        prompts, model_path=model_path, stop_token=task_stop_token(tokenizer, task), max_new_tokens=max_new_tokens,
        num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu, cpus_per_worker=cfg.scaling.cpus_per_worker,
        dtype=training_dtype(cfg), batch_size=batch_size, trust_remote_code=cfg.model.trust_remote_code,
        cache_dir=cfg.data.cache_dir)
    seconds = time.perf_counter() - started

    # -- score and write
    metrics, per_example = score_with_examples(task.name, predictions, references, contexts)
    predictions_path = storage.with_suffix(out, ".predictions.jsonl")
    results = {
        "task": task.name, "model": model_path, "label": label_for(model_path, few_shot), "split": split,
        "few_shot": few_shot, "num_examples": len(examples), "metrics": metrics,
        "data_hash": source_fingerprint(cfg, split), "config": cfg.model_dump(mode="json"),
        "predictions_file": storage.basename(predictions_path),
        "generation": {"seconds": seconds, "examples_per_second": len(examples) / max(seconds, 1e-9),
                       "max_new_tokens": max_new_tokens, "workers": cfg.scaling.num_workers, "batch_size": batch_size},
    }
    lines = [json.dumps({"index": i, "prompt": ex.prompt, "reference": ex.reference, "prediction": pred, **detail})
             for i, (ex, pred, detail) in enumerate(zip(examples, predictions, per_example))]
    storage.write_text(predictions_path, "".join(line + "\n" for line in lines))
    storage.write_text(out, json.dumps(results, indent=2))  # last: the results name the predictions
    _print_summary(results, out)
    return results


def label_for(model_path: str, few_shot: int) -> str:
    name = storage.basename(model_path)
    if name == "model" and storage.basename(storage.parent(model_path)):  # an llmft run's export: name it after the run
        name = storage.basename(storage.parent(model_path))
    return f"{name} ({few_shot}-shot)" if few_shot else name


def _print_summary(results: dict[str, Any], out_path: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{results['task']} {results['split']}: {results['label']}, {results['num_examples']} examples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results["metrics"].items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.3f}")
        elif isinstance(value, int):
            table.add_row(key, str(value))
    console = Console()
    console.print(table)
    console.print(f"results: {storage.shown(out_path)}  predictions: "
                  f"{storage.shown(storage.with_suffix(out_path, '.predictions.jsonl'))}")
