"""`llmft train`: the driver side. Prepares the data once, connects to Ray and runs the workers.

Everything that can be wrong with the user's input (config, model path, data, cluster size,
resume checkpoint) is checked here, before a worker starts, so it fails in seconds with a clear
message instead of inside a worker minutes later.
"""

from __future__ import annotations

import functools
import os
import secrets
import time
from pathlib import Path

from llmft import storage
from llmft.cluster import check_placement, init_ray, keep_embedded_ray_on_loopback
from llmft.config import Config, resolve_auto
from llmft.errors import LlmftError
from llmft.eval.prompts import GenerationInputs, generation_inputs
from llmft.paths import absolute_paths
from llmft.storage import join
from llmft.train.allocator import cpu_worker_malloc


def run_training(cfg: Config, *, address: str | None = None, resume: str | None = None,
                 extra_env: dict[str, str] | None = None, callbacks: list | None = None) -> str:
    """Train, then export the best checkpoint. Returns the run folder (a path or a storage URI).

    `callbacks` are Ray Train callbacks (`llmft sweep` passes Tune's, which forwards the reports).
    """
    keep_embedded_ray_on_loopback(address)
    from llmft.train import startup

    timeline = {"process_started": startup.process_started(), "launched": time.time()}
    from llmft.data.tokenize import tokenize_split
    from llmft.export import export_checkpoint
    from llmft.models.architecture import local_hidden_size
    from llmft.models.source import model_source
    from llmft.models.tokenizer import load_task_tokenizer

    # -- data: tokenized once here (and cached), then shared with the workers
    cfg = absolute_paths(cfg)
    storage.check_reachable(cfg.output.dir, "output.dir")  # no credentials, no endpoint, no bucket: fail now
    tokenizer = load_task_tokenizer(cfg)
    train_table = tokenize_split(cfg, tokenizer, "train")
    if train_table.num_rows == 0:
        raise LlmftError(f"data.train ({cfg.data.train}) has no usable examples after tokenization "
                         f"(max_length {cfg.data.max_length}, over_length {cfg.data.over_length}). Run `llmft prepare`.")
    cfg = resolve_auto(cfg, train_table.num_rows)
    valid_table = tokenize_split(cfg, tokenizer, "valid") if cfg.data.valid else None
    if valid_table is not None and cfg.training.eval_examples:
        valid_table = valid_table.slice(0, cfg.training.eval_examples)
    if cfg.deepspeed.config_file:
        from llmft.train.deepspeed import build_deepspeed_config

        build_deepspeed_config(cfg)  # a contradicting DeepSpeed JSON fails here, not in a worker

    startup.mark(timeline, "data_ready")

    # -- run folder and resume point
    run_name, resume_path = resolve_run(cfg, resume)
    run_dir = join(cfg.output.dir, run_name)

    # -- Ray
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from llmft.data.batching import TokenizedExamples
    from llmft.train.loop import WorkerInput, train_loop_per_worker

    init_ray(address)
    check_placement(cfg)
    storage.check_every_node_reaches(cfg.output.dir, "output.dir")
    startup.mark(timeline, "ray_ready")
    inputs = WorkerInput(
        config=cfg,
        # Flat arrays, which workers map from the object store without copying.
        train_data=ray.put(TokenizedExamples.from_table(train_table)),
        valid_data=ray.put(TokenizedExamples.from_table(valid_table)) if valid_table is not None else None,
        run_dir=run_dir,
        hidden_size=local_hidden_size(model_source(cfg, "model.name_or_path")),
        resume_path=resume_path,
        generation_eval=generation_eval_inputs(cfg, tokenizer),
        timeline=timeline,
    )
    del train_table, valid_table  # the object store holds the data now
    scored = cfg.data.valid is not None
    trainer = TorchTrainer(
        functools.partial(train_loop_per_worker, inputs),
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=run_name,
            storage_path=cfg.output.dir,
            failure_config=FailureConfig(max_failures=cfg.training.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.output.keep_checkpoints + 1,  # the best K plus the latest
                checkpoint_score_attribute=cfg.output.checkpoint_metric if scored else None,
                checkpoint_score_order=cfg.output.checkpoint_mode),
            worker_runtime_env={"env_vars": worker_env(extra_env, cpu=not cfg.scaling.use_gpu)},
            callbacks=callbacks,
        ),
    )
    if resume != "latest":
        claim_run_folder(run_dir)
    print(f"llmft: run {run_name} -> {run_dir}", flush=True)
    startup.mark(timeline, "fit_called")
    result = fit(trainer)

    # -- export the best checkpoint as a Hugging Face model
    if cfg.output.export_best and result.checkpoint is not None:
        best = result.get_best_checkpoint(cfg.output.checkpoint_metric, cfg.output.checkpoint_mode) if scored else None
        best = join(run_dir, Path((best or result.checkpoint).path).name)  # Ray keeps it in the run folder
        out = export_checkpoint(best, join(run_dir, "model"))
        print(f"llmft: exported {storage.shown(best)} -> {storage.shown(out)}", flush=True)
    return run_dir


def generation_eval_inputs(cfg: Config, tokenizer) -> GenerationInputs | None:
    """Prompts and references of the validation subset scored by generation during training."""
    if not (cfg.training.generation_eval_every_steps and cfg.data.valid):
        return None
    return generation_inputs(cfg, tokenizer, "valid", limit=cfg.training.generation_eval_examples)


def resolve_run(cfg: Config, resume: str | None) -> tuple[str, str | None]:
    """The run name to use and, for `--resume PATH`, the checkpoint to start from.

    `--resume latest` reuses the run's name, so Ray Train restores its own record of the run
    and hands the workers its latest checkpoint. A fresh run never reuses an existing folder, and
    a generated name carries a random part, so runs started in the same second get their own.
    """
    base = cfg.output.run_name
    if resume is None:
        name = base or f"{cfg.data.task}-{storage.basename(cfg.model.name_or_path)}-{_unique_stamp()}"
        if storage.exists(join(cfg.output.dir, name)):
            raise LlmftError(_taken_message(join(cfg.output.dir, name)))
        return name, None
    if resume == "latest":
        if base is None:
            raise LlmftError("`--resume latest` needs output.run_name (the run to continue); pass it as an "
                             f"override, e.g. output.run_name=<folder under {storage.shown(cfg.output.dir)}>.")
        from llmft.checkpoint import check_compatible, find_checkpoints, read_state

        complete = find_checkpoints(join(cfg.output.dir, base))
        if not complete:
            raise LlmftError(f"`--resume latest`: {storage.shown(join(cfg.output.dir, base))} holds no complete "
                             "checkpoint to resume from.")
        check_compatible(read_state(complete[-1]), cfg, where=storage.shown(complete[-1]))  # in seconds, not in a worker
        return base, complete[-1]
    from llmft.checkpoint import check_compatible, read_state

    path = resume if storage.is_uri(resume) else str(Path(resume).expanduser().resolve())
    check_compatible(read_state(path), cfg, where=storage.shown(path))
    return f"{base or storage.basename(storage.parent(path))}-resumed-{_unique_stamp()}", path


def claim_run_folder(run_dir: str) -> None:
    """Create a new run's local folder, failing if it exists: of two runs given the same
    output.run_name at once, only one gets it. (A bucket has no folders to claim.)"""
    if storage.is_uri(run_dir):
        return
    try:
        Path(run_dir).mkdir(parents=True)
    except FileExistsError:
        raise LlmftError(_taken_message(run_dir)) from None


def _unique_stamp() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def _taken_message(run_dir: str) -> str:
    finished = " and holds a finished run (an exported model/)" if storage.exists(join(run_dir, "model")) else ""
    return (f"Run folder {storage.shown(run_dir)} already exists{finished}. Continue that run with `--resume "
            "latest`, or give another output.run_name (unset, llmft names the run <task>-<model>-<time>-<random>).")


def scaling_config(cfg: Config):
    """Ray Train's worker group for `cfg.scaling` (training and the zero3 eval engine)."""
    from ray.train import ScalingConfig

    resources = {"CPU": cfg.scaling.cpus_per_worker, **cfg.scaling.resources_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = 1
    return ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                         resources_per_worker=resources)


def worker_env(extra: dict[str, str] | None, *, cpu: bool = False) -> dict[str, str]:
    """Environment for the workers: llmft's test switches and thread settings pass through; CPU
    workers also get `allocator.CPU_WORKER_MALLOC`."""
    env = {k: v for k, v in os.environ.items() if k.startswith("LLMFT_") or k in ("TORCH_EXTENSIONS_DIR", "HF_HOME", "HF_HUB_OFFLINE")}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if cpu:
        env.update(cpu_worker_malloc())
    env.update(extra or {})
    return env


def fit(trainer):
    """`trainer.fit()`, with a worker's LlmftError raised as the user error it is."""
    try:
        return trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; surface a user error's own message
        user_error = find_user_error(exc)
        if user_error:
            raise LlmftError(user_error) from None
        raise


def find_user_error(exc: BaseException) -> str | None:
    """Ray re-raises worker exceptions wrapped; find an LlmftError's message inside. The error
    objects themselves come first: the wrappers' text shortens a worker's message ("...")."""
    seen, texts = set(), []
    stack = [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, LlmftError):
            return str(err)
        texts.append(str(err))
        stack += [err.__cause__, err.__context__]
        failures = getattr(err, "worker_failures", None)
        if isinstance(failures, dict):
            stack += list(failures.values())
    for text in texts:
        if "LlmftError: " in text:
            return text.split("LlmftError: ", 1)[1].strip().splitlines()[0]
    return None
