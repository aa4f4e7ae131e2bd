"""`llmft generate MODEL`: quick inference in the task's format, in this process.

The model is an exported folder, a training checkpoint (exported to a temporary folder first),
either of them at a storage URI, or a base model (folder or hub id). Input is one row of raw task fields
(`--text`, `--field NAME=VALUE`), a ready `--prompt`, or a JSONL file of rows (one answer per
row to a JSONL output). Prompts are built as `llmft eval` builds them (`--few-shot K` included)
and generated in the same batches by the same code (`eval.generate`), so greedy answers equal
`llmft eval`'s predictions for the same rows; answers stop at the task's stop marker. A terminal
sees a single answer's tokens as they come.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmft.config import Config, load_config
from llmft.errors import LlmftError
from llmft.files import write_text_atomic
from llmft.models.tokenizer import task_stop_token

DEFAULT_MAX_NEW_TOKENS = 256


def run_generate(model: str, *, config: str | None = None, task: str | None = None, text: str | None = None,
                 fields: tuple[str, ...] = (), prompt: str | None = None, input_path: str | None = None,
                 output_path: str | None = None, few_shot: int = 0, shots: str | None = None,
                 max_new_tokens: int | None = None, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, batch_size: int | None = None) -> list[dict[str, Any]]:
    """Answer the given input with `model`; returns the output rows (index, prediction, stop_reason)."""
    import torch

    from llmft.data.tokenize import formatter_for
    from llmft.eval.generate import Replica, Sampling, generation_batches, generation_tokenizer
    from llmft.eval.prompts import few_shot_prefix, prompt_of
    from llmft.eval.run import eval_config
    from llmft.tasks import get_task

    # -- what to answer (user errors surface here, before the model loads)
    given = [name for name, value in (("--text/--field", text is not None or fields), ("--prompt", prompt is not None),
                                      ("--input", input_path is not None)) if value]
    if len(given) != 1:
        raise LlmftError("Give one input: --text (or --field NAME=VALUE) for one row of task fields, --prompt "
                         f"for a ready prompt, or --input ROWS.jsonl{f' (got {given[0]} and {given[1]})' if given else ''}.")
    if temperature < 0 or not 0 < top_p <= 1:
        raise LlmftError(f"--temperature must be >= 0 and --top-p in (0, 1]; got {temperature} and {top_p}.")
    if top_p < 1 and temperature == 0:
        raise LlmftError("--top-p samples, which needs --temperature > 0 (0, the default, is greedy).")
    if few_shot and not (shots or config):
        raise LlmftError("--few-shot draws solved examples from training data: give --shots SOURCE (a .jsonl file, "
                         "a hub dataset or sample:<task>) or --config CONFIG (its data.train).")
    if input_path and not output_path:
        output_path = str(Path(input_path).with_suffix("")) + ".predictions.jsonl"
    cfg = _config(model, config, task or ("prompt_completion" if prompt is not None else None), shots)
    task_ = get_task(cfg.data.task)

    with model_folder(model) as folder:
        cfg = eval_config(cfg.model_copy(update={"scaling": cfg.scaling.model_copy(
            update={"use_gpu": torch.cuda.is_available()})}), model=folder, batch_size=batch_size)
        tokenizer = generation_tokenizer(cfg)
        if prompt is not None:
            rows, prompts = [{"prompt": prompt}], [prompt]
        else:
            formatter = formatter_for(task_, tokenizer)
            rows, where = _rows(task_, text, fields, input_path)
            prompts = []
            for row, place in zip(rows, where):
                try:
                    prompts.append(prompt_of(task_, formatter, row))
                except (ValueError, TypeError, KeyError) as exc:
                    raise LlmftError(f"{place}: {exc} (task {task_.name} reads "
                                     f"{', '.join(f for f in task_.required_fields if f != task_.answer_field)}).") from None
            shots_text = few_shot_prefix(cfg, task_, formatter, tokenizer, few_shot)
            prompts = [shots_text + p for p in prompts]

        # -- generate, batch by batch, as `llmft eval` does
        sampling = Sampling(temperature, top_p) if temperature > 0 else None
        replica = Replica(cfg, stop_token=task_stop_token(tokenizer, task_), sampling=sampling,
                          max_new_tokens=max_new_tokens or cfg.eval.max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
        torch.manual_seed(seed)
        streamer = _terminal_streamer(replica.tokenizer) if len(prompts) == 1 and not output_path else None
        answers: dict[int, Any] = {}
        for batch in generation_batches(prompts, replica.tokenizer, cfg.eval.batch_size):
            answers.update(zip(batch, replica.generate([prompts[i] for i in batch], streamer=streamer)))

    out = [{"index": i, "input": rows[i], "prediction": answers[i].text, "stop_reason": answers[i].stop_reason}
           for i in range(len(prompts))]
    if output_path:
        write_text_atomic(output_path, "".join(json.dumps(row) + "\n" for row in out))
        reasons = Counter(row["stop_reason"] for row in out)
        print(f"llmft: {len(out)} answers -> {output_path} (stopped at: "
              + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) + ")", file=sys.stderr)
    elif streamer is None:
        print(out[0]["prediction"])
    else:
        print(f"\n[{out[0]['stop_reason']}]", file=sys.stderr)
    return out


def _config(model: str, config: str | None, task: str | None, shots: str | None) -> Config:
    """The config to generate with: `--config`'s (task, few-shot data, dtype), else a minimal one."""
    from llmft.tasks import TASKS

    if task is not None and task not in TASKS:
        raise LlmftError(f"--task {task!r} is not a task; choose one of {', '.join(TASKS)}.")
    if config:
        cfg = load_config(config)
        data = cfg.data.model_copy(update={key: value for key, value in (("task", task), ("train", shots)) if value})
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"name_or_path": model}), "data": data})
    if task is None:
        raise LlmftError(f"Which task's format? Give --task ({', '.join(TASKS)}) or --config CONFIG.")
    # data.train is only read for --few-shot, which then has --shots.
    return Config.model_validate({"model": {"name_or_path": model}, "data": {"task": task, "train": shots or "-"}})


def _rows(task, text: str | None, fields: tuple[str, ...], input_path: str | None) -> tuple[list[dict], list[str]]:
    """Rows of raw task fields, and where each came from (for error messages)."""
    from llmft.eval.prompts import row_from_text

    if input_path is None:
        row = row_from_text(task, text) if text is not None else {}
        for item in fields:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise LlmftError(f"--field {item!r} is not of the form NAME=VALUE (e.g. --field question=\"How many?\").")
            row[name] = value
        return [row], ["the command line"]
    path = Path(input_path)
    if not path.is_file():
        raise LlmftError(f"--input {input_path} does not exist. Give a JSONL file with one row of task fields per line.")
    rows, where = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LlmftError(f"{path} line {number} is not JSON ({exc.msg}). Give one JSON object per line.") from None
        if not isinstance(row, dict):
            raise LlmftError(f"{path} line {number} is a JSON {type(row).__name__}, not an object of task fields.")
        rows.append(row)
        where.append(f"{path} line {number}")
    if not rows:
        raise LlmftError(f"--input {path} holds no rows.")
    return rows, where


@contextlib.contextmanager
def model_folder(model: str) -> Iterator[str]:
    """What transformers loads for MODEL: a training checkpoint (folder or URI) exported to a
    temporary folder; an exported folder, a storage URI (downloaded on load) or a base model as is."""
    from llmft import storage
    from llmft.checkpoint import STATE_FILE

    if storage.exists(storage.join(model, STATE_FILE)):  # a checkpoint is complete once this file is there
        from llmft.export import export_checkpoint

        with tempfile.TemporaryDirectory(prefix="llmft-generate-") as scratch:
            print(f"llmft: exporting checkpoint {storage.shown(model)} ...", file=sys.stderr, flush=True)
            yield export_checkpoint(model, str(Path(scratch) / "model"))
        return
    if not storage.is_uri(model) and not Path(model).expanduser().exists() and model.startswith((".", "/", "~")):
        raise LlmftError(f"MODEL {model}: no such folder. Give an exported model folder (outputs/<run>/model), a "
                         "checkpoint folder (outputs/<run>/checkpoint_*), a storage URI of either, or a base "
                         "model's folder or hub id.")
    yield model


def _terminal_streamer(tokenizer):
    """Tokens printed as they come, when a person watches (stdout is a terminal)."""
    if not sys.stdout.isatty():
        return None
    from transformers import TextStreamer

    return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
