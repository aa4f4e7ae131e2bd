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
from llmft.cluster import check_placement, init_ray, keep_embedded_ray_on_loopback
from llmft.config import Config
from llmft.errors import LlmftError
from llmft.paths import absolute_paths


def run_eval(cfg: Config, *, model: str | None, split: str, limit: int | None, few_shot: int,
             out: str | None, address: str | None, engine: str | None = None,
             batch_size: int | None = None) -> dict[str, Any]:
    """Generate answers for `split` with `model` (default: the config's), score, write results.
    `engine` and `batch_size` override `eval.engine` and `eval.batch_size`."""
    keep_embedded_ray_on_loopback(address)
    from llmft.data.sources import source_fingerprint
    from llmft.eval import engines
    from llmft.eval.generate import STOP_REASONS, generation_batches, generation_tokenizer
    from llmft.eval.metrics import score_with_examples
    from llmft.eval.prompts import generation_inputs
    from llmft.models.source import check_model_folder, model_source
    from llmft.models.tokenizer import task_stop_token
    from llmft.tasks import get_task

    # -- model, data and engine (user errors surface here, before Ray starts)
    cfg = absolute_paths(eval_config(cfg, model=model, engine=engine, batch_size=batch_size))
    model_path = cfg.model.name_or_path
    out = out or str(Path("outputs/eval") / f"{cfg.data.task}-{storage.basename(model_path)}-{split}-{few_shot}shot.json")
    storage.check_reachable(out, "--out")
    tokenizer = generation_tokenizer(cfg)  # a model given as a URI is downloaded here, once per node
    local_path = model_source(cfg, "model.name_or_path")
    if Path(local_path).is_dir():
        check_model_folder(cfg, Path(local_path))
    task = get_task(cfg.data.task)
    if getattr(cfg.data, split) is None:
        raise LlmftError(f"data.{split} is not set in {cfg.source}; give the split's source or choose another --split.")
    inputs = generation_inputs(cfg, tokenizer, split, limit=limit, few_shot=few_shot)
    examples, prompts = inputs.examples, inputs.prompts
    max_new_tokens = cfg.eval.max_new_tokens or inputs.max_new_tokens
    batches = generation_batches(prompts, tokenizer, cfg.eval.batch_size)
    longest_prompt = len(tokenizer(prompts[batches[0][0]])["input_ids"]) if batches else 0
    seq_len = longest_prompt + max_new_tokens
    choice = engines.choose_engine(cfg, local_path, seq_len=seq_len)

    # -- generate on Ray workers
    init_ray(address)
    check_placement(cfg)
    print(f"llmft: eval engine {choice.name}" + (" (auto)" if choice.requested == "auto" else "")
          + f", {cfg.world_size} workers, {len(batches)} batches of up to {cfg.eval.batch_size}", flush=True)
    started = time.perf_counter()
    generated = engines.generate(choice, cfg, prompts, batches, stop_token=task_stop_token(tokenizer, task),
                                 max_new_tokens=max_new_tokens, seq_len=seq_len)
    seconds = time.perf_counter() - started
    answers, decoding = generated.answers, generated.decoding_seconds

    # -- score and write
    predictions = [answer.text for answer in answers]
    metrics, per_example = score_with_examples(task.name, predictions, inputs.references, inputs.contexts)
    predictions_path = storage.with_suffix(out, ".predictions.jsonl")
    results = {
        "task": task.name, "model": model_path, "label": label_for(model_path, few_shot), "split": split,
        "few_shot": few_shot, "num_examples": len(examples), "parameters": choice.parameters,
        "engine": choice.name, "metrics": metrics,
        "stop_reasons": {reason: sum(a.stop_reason == reason for a in answers) for reason in STOP_REASONS},
        "data_hash": source_fingerprint(cfg, split), "config": cfg.model_dump(mode="json"),
        "predictions_file": storage.basename(predictions_path),
        # `seconds` is from handing the prompts to Ray to the last answer: the workers' start and
        # the model load are in it. `decoding_seconds` is the busiest replica's generating alone.
        "generation": {"seconds": seconds, "examples_per_second": len(examples) / max(seconds, 1e-9),
                       "decoding_seconds": decoding,
                       "decoding_examples_per_second": len(examples) / decoding if decoding else None,
                       "engine_requested": choice.requested, "max_new_tokens": max_new_tokens,
                       "workers": cfg.world_size, "batch_size": cfg.eval.batch_size},
    }
    lines = [json.dumps({"index": i, "prompt": ex.prompt, "reference": ex.reference, "prediction": answer.text,
                         "stop_reason": answer.stop_reason, **detail})
             for i, (ex, answer, detail) in enumerate(zip(examples, answers, per_example))]
    storage.write_text(predictions_path, "".join(line + "\n" for line in lines))
    storage.write_text(out, json.dumps(results, indent=2))  # last: the results name the predictions
    _print_summary(results, out)
    return results


def eval_config(cfg: Config, *, model: str | None = None, engine: str | None = None,
                batch_size: int | None = None) -> Config:
    """`cfg` for generating with `model` (default: the config's) and its own tokenizer, loaded for
    inference (no gradient checkpointing), with the command line's engine and batch size."""
    updates = {"engine": engine, "batch_size": batch_size}
    return cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"name_or_path": model or cfg.model.name_or_path, "tokenizer": None,
                                              "gradient_checkpointing": False}),
        "eval": cfg.eval.model_copy(update={k: v for k, v in updates.items() if v is not None}),
        # An elastic [min, max] is for training: evaluation runs on the most workers.
        "scaling": cfg.scaling.model_copy(update={"num_workers": cfg.world_size}),
    })


def label_for(model_path: str, few_shot: int) -> str:
    name = storage.basename(model_path)
    if name == "model" and storage.basename(storage.parent(model_path)):  # an llmft run's export: name it after the run
        name = storage.basename(storage.parent(model_path))
    return f"{name} ({few_shot}-shot)" if few_shot else name


def _print_summary(results: dict[str, Any], out_path: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{results['task']} {results['split']}: {results['label']}, {results['num_examples']} examples, "
                        f"engine {results['engine']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results["metrics"].items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.3f}")
        elif isinstance(value, int):
            table.add_row(key, str(value))
    console = Console()
    console.print(table)
    console.print("stopped at: " + ", ".join(f"{reason} {count}" for reason, count in results["stop_reasons"].items()))
    console.print(f"results: {storage.shown(out_path)}  predictions: "
                  f"{storage.shown(storage.with_suffix(out_path, '.predictions.jsonl'))}")
