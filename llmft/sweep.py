"""`llmft sweep`: a hyperparameter search on Ray Tune, each trial a full llmft training run.

The search space is the config's `sweep:` section: `grid` values (every combination is tried)
and `choice` values (drawn at random per trial), over any config key. Trials are composed as
Ray's Train V2 documentation shows: the Tune trial function is a Ray Train driver
(`run_training`), and Tune's `TuneReportCallback` forwards what the workers report (the
validation metrics, at eval and checkpoint time) to Tune, where ASHA may stop a trailing trial.
Trials are ranked by `output.checkpoint_metric`, the metric that ranks checkpoints.

A sweep folder, `output.dir/output.run_name`:

    tune/               Ray Tune's experiment: its state is what `--resume` restores
    trials/<trial id>/  each trial's llmft run (metrics.jsonl, checkpoints), named by its
                        Tune trial id, so a restored trial resumes from its own checkpoint
    trials.md, .json    the trial table
    valid_curves.png    every trial's validation curve
    model/              the best trial's best checkpoint, exported
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import math
import os
import time
from typing import Any

from llmft import storage
from llmft.cluster import check_placement, init_ray, keep_embedded_ray_on_loopback
from llmft.config import Config, leaf_keys, with_values
from llmft.errors import LlmftError
from llmft.paths import absolute_paths
from llmft.storage import join

# Keys a trial cannot take from the search space: the sweep sets where each trial writes.
NOT_SWEEPABLE = ("output.dir", "output.run_name", "output.export_best", "source")
# A trial's own process only drives Ray Train (its workers hold the CPUs and GPUs), so it takes no
# CPU, or a 2-worker trial could never start on 2 CPUs. Tune needs some resource for it: memory, the
# one thing that process holds (its Python, torch and tokenizer).
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 512 * 2**20}
# ASHA's max_t. ASHA also stops a trial that reaches max_t, and a stop kills the trial's Ray Train
# run before it reports its end: trials end on their own instead (max_steps, epochs).
NO_STEP_LIMIT = 2**31
CONFIG_FILE = "sweep_config.json"  # the config a sweep started with; `--resume` must match it
# Written by the trial function when `run_training` returned: the trial was not stopped early.
COMPLETED = "llmft_trial_completed"


class SweepInterrupted(LlmftError):
    """The sweep stopped before every trial finished (Ctrl+C); `--resume` continues it."""

    exit_code = 130


def run_sweep(cfg: Config, *, address: str | None = None, resume: bool = False) -> str:
    """Run (or, with `resume`, continue) the sweep of `cfg.sweep`. Returns the sweep folder (a path or URI)."""
    keep_embedded_ray_on_loopback(address)
    from llmft.data.tokenize import tokenize_split
    from llmft.models.tokenizer import load_task_tokenizer

    # -- everything the user can get wrong, before Ray starts
    space = trial_values(cfg)
    metric, mode = cfg.output.checkpoint_metric, cfg.output.checkpoint_mode
    if cfg.data.valid is None or not metric.startswith("valid_"):
        raise LlmftError(f"{cfg.source}: a sweep ranks its trials by output.checkpoint_metric on validation "
                         f"data, but {'data.valid is not set' if cfg.data.valid is None else f'it is {metric!r}'}. "
                         "Set data.valid and a validation metric (e.g. output.checkpoint_metric: valid_loss).")
    cfg = absolute_paths(cfg)
    storage.check_reachable(cfg.output.dir, "output.dir")
    name, sweep_dir = sweep_folder(cfg, resume)
    trials_dir = join(sweep_dir, "trials")
    trial_configs = [with_values(cfg, values, "sweep") for values in space]
    # Tokenize (and cache) once here: a data error shows now, and the trials find the cache.
    tokenizer = load_task_tokenizer(cfg)
    for split in ("train", "valid"):
        tokenize_split(cfg, tokenizer, split)

    # -- Ray Tune
    import ray
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    init_ray(address)
    for trial_cfg in trial_configs:
        check_placement(trial_cfg)
    # Trials may leave out the metric (a report of generation metrics only); ASHA skips those.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    trainable = ray.tune.with_resources(
        functools.partial(run_trial, base=cfg, trials_dir=trials_dir, env=_trial_env()),
        TRIAL_DRIVER_RESOURCES)
    tune_path = join(sweep_dir, "tune")
    if resume:
        if not ray.tune.Tuner.can_restore(tune_path):
            raise LlmftError(f"`llmft sweep --resume`: {tune_path} holds no Ray Tune experiment to resume. "
                             f"Check output.dir and output.run_name ({name}).")
        tuner = ray.tune.Tuner.restore(tune_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        storage.write_text(join(sweep_dir, CONFIG_FILE), json.dumps(cfg.model_dump(mode="json"), indent=2))
        scheduler = ASHAScheduler(time_attr="step", metric=metric, mode=mode, max_t=NO_STEP_LIMIT,
                                  grace_period=cfg.sweep.grace_period,
                                  reduction_factor=cfg.sweep.reduction_factor) if cfg.sweep.early_stopping \
            else FIFOScheduler()
        tuner = ray.tune.Tuner(
            trainable,
            param_space=search_space(cfg),
            tune_config=ray.tune.TuneConfig(scheduler=scheduler, num_samples=cfg.sweep.num_samples,
                                            max_concurrent_trials=concurrent_trials(cfg, trial_configs, ray.cluster_resources()),
                                            trial_dirname_creator=trial_folder_name),
            run_config=ray.tune.RunConfig(name="tune", storage_path=sweep_dir, verbose=1),
        )
    print(f"llmft: sweep {name} -> {storage.shown(sweep_dir)}", flush=True)
    results = tuner.fit()

    # -- the trial table, curves and the best trial's model
    rows = trial_rows(results, list(space[0]), metric, mode, trials_dir)
    print_trial_table(rows, metric)
    storage.write_text(join(sweep_dir, "trials.md"), trial_table_markdown(rows, metric))
    storage.write_text(join(sweep_dir, "trials.json"), json.dumps(rows, indent=2))
    storage.write_bytes(join(sweep_dir, "valid_curves.png"), curves_png(rows, metric))
    unfinished = [row["trial"] for row in rows if row["status"] in ("interrupted", "pending")]
    if unfinished:
        raise SweepInterrupted(f"The sweep stopped before trials {', '.join(unfinished)} finished. Continue it "
                               f"with `llmft sweep {cfg.source} output.run_name={name} --resume`: finished "
                               "trials are kept, and each unfinished one resumes from its latest checkpoint.")
    export_best(rows, metric, mode, sweep_dir)
    return sweep_dir


def trial_folder_name(trial) -> str:
    """Tune's folder of a trial is named by its id, as the trial's llmft run folder is."""
    return trial.trial_id


def run_trial(values: dict[str, Any], *, base: Config, trials_dir: str, env: dict[str, str]) -> dict[str, Any]:
    """One Tune trial: an llmft training run with the trial's values, reporting to Tune.

    Its run folder is named by the trial id, which Tune keeps across a restore: a restored trial
    finds its own checkpoints there and resumes from the latest one.
    """
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from llmft.checkpoint import find_checkpoints
    from llmft.train.driver import run_training

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = with_values(base, {**values, "output.dir": trials_dir, "output.run_name": trial_id,
                             "output.export_best": False}, "sweep")
    run_dir = join(trials_dir, trial_id)
    resume = "latest" if find_checkpoints(run_dir) else None
    if resume is None and storage.exists(run_dir):  # started before but never checkpointed: nothing to keep
        fs, path = storage.resolve(run_dir)
        fs.delete_dir(path)
    run_training(cfg, resume=resume, extra_env=env, callbacks=[TuneReportCallback()])
    return {COMPLETED: True}


# ---------------------------------------------------------------- the search space


def trial_values(cfg: Config) -> list[dict[str, Any]]:
    """Every combination of the search space's values, each checked as a trial's config would be.

    An unknown or unsweepable key, or a value the config refuses, is a user error naming it.
    """
    sweep = cfg.sweep
    if not (sweep.grid or sweep.choice):
        raise LlmftError(f"{cfg.source}: the config has no search space. Add a `sweep:` section with "
                         "`grid:` and/or `choice:` mapping config keys to lists of values, e.g. "
                         "sweep: {grid: {training.learning_rate: [1.0e-5, 2.0e-5]}}.")
    known = leaf_keys()
    for section, values in (("grid", sweep.grid), ("choice", sweep.choice)):
        for key, options in values.items():
            if key not in known:
                import difflib

                guess = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f" Did you mean `{guess[0]}`?" if guess else " See the config reference in README.md."
                raise LlmftError(f"{cfg.source}: sweep.{section} names `{key}`, which is not a config key.{hint}")
            if key in NOT_SWEEPABLE or key.startswith("sweep."):
                raise LlmftError(f"{cfg.source}: sweep.{section} names `{key}`, which the sweep sets itself "
                                 "(each trial writes to its own folder under the sweep's). Remove it.")
            if not options:
                raise LlmftError(f"{cfg.source}: sweep.{section}.{key} has no values; give at least one.")
    both = sorted(set(sweep.grid) & set(sweep.choice))
    if both:
        raise LlmftError(f"{cfg.source}: `{both[0]}` is in both sweep.grid and sweep.choice; keep it in one.")
    keys = [*sweep.grid, *sweep.choice]
    combinations = [dict(zip(keys, combo))
                    for combo in itertools.product(*sweep.grid.values(), *sweep.choice.values())]
    for values in combinations:
        with_values(cfg, values, f"the sweep section of {cfg.source}")
    return combinations


def search_space(cfg: Config) -> dict[str, Any]:
    """Tune's param_space: flat dotted keys, grid values as grid searches, choices as random choices."""
    import ray.tune

    return ({key: ray.tune.grid_search(list(values)) for key, values in cfg.sweep.grid.items()}
            | {key: ray.tune.choice(list(values)) for key, values in cfg.sweep.choice.items()})


def trial_resources(cfg: Config) -> dict[str, float]:
    """Ray resources one trial's workers take."""
    per_worker = {"CPU": cfg.scaling.cpus_per_worker, **cfg.scaling.resources_per_worker}
    if cfg.scaling.use_gpu:
        per_worker["GPU"] = 1
    return {name: amount * cfg.scaling.num_workers for name, amount in per_worker.items()}


def concurrent_trials(cfg: Config, trial_configs: list[Config], cluster: dict[str, float]) -> int:
    """`sweep.max_concurrent_trials`, else as many trials as the `cluster`'s resources hold at once."""
    if cfg.sweep.max_concurrent_trials:
        return cfg.sweep.max_concurrent_trials
    needs: dict[str, float] = {}
    for trial_cfg in trial_configs:  # the largest trial of the space (workers may be swept too)
        for name, amount in trial_resources(trial_cfg).items():
            needs[name] = max(needs.get(name, 0), amount)
    return max(1, min(int(cluster.get(name, 0) // amount) for name, amount in needs.items() if amount > 0))


def sweep_folder(cfg: Config, resume: bool) -> tuple[str, str]:
    """The sweep's name and folder; a new sweep never reuses a folder, a resumed one must find its own."""
    name = cfg.output.run_name
    if resume and name is None:
        raise LlmftError("`llmft sweep --resume` needs output.run_name (the sweep to continue); pass it as an "
                         f"override, e.g. output.run_name=<folder under {cfg.output.dir}>.")
    name = name or f"sweep-{cfg.data.task}-{storage.basename(cfg.model.name_or_path)}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = join(cfg.output.dir, name)
    saved = join(folder, CONFIG_FILE)
    if not resume and storage.exists(folder):
        raise LlmftError(f"Sweep folder {storage.shown(folder)} already exists. Continue it with `--resume`, or "
                         "start a new sweep with output.run_name=<new name>.")
    if resume and storage.exists(saved):
        before = Config.model_validate(json.loads(storage.read_text(saved))).dotted_values
        now = cfg.dotted_values
        changed = sorted(k for k in before.keys() | now.keys() if k != "source" and before.get(k) != now.get(k))
        if changed:
            raise LlmftError(f"`llmft sweep --resume`: the config differs from the one sweep {name} started with, "
                             f"at {', '.join(changed[:5])}. Resume with the same config and overrides "
                             f"(saved in {storage.shown(saved)}), or start a new sweep.")
    return name, folder


def _trial_env() -> dict[str, str]:
    """The driver's llmft switches, for the trials' workers (Tune's trial processes do not inherit them)."""
    from llmft.train.driver import worker_env

    return worker_env(None)


# ---------------------------------------------------------------- results


def trial_rows(results, keys: list[str], metric: str, mode: str, trials_dir: str) -> list[dict[str, Any]]:
    """One row per trial: its values, best validation metric, steps trained and status. A trial's
    run folder is `trials_dir/<trial id>`."""
    from llmft.checkpoint import find_checkpoints

    rows = []
    for result in results:
        trial = storage.basename(result.path)  # the trial id (`trial_folder_name`)
        history = _history(result, metric)
        last = result.metrics or {}
        if result.error is not None:
            status = "error"
        elif last.get(COMPLETED):
            status = "completed"
        elif last.get("done"):
            status = "stopped early"
        else:
            # Started: it reported, or saved a checkpoint that Tune had not recorded yet when stopped.
            status = "interrupted" if history or find_checkpoints(join(trials_dir, trial)) else "pending"
        best = (min if mode == "min" else max)(history.values()) if history else None
        rows.append({"trial": trial,
                     **{key: result.config.get(key) for key in keys},
                     f"best_{metric}": best, "steps": _last_step(result), "status": status,
                     "curve": sorted(history.items())})
    return sorted(rows, key=lambda row: row["trial"])


def _history(result, metric: str) -> dict[int, float]:
    """The trial's reported metric by step; a step reported twice (before and after a resume) keeps its last value."""
    frame = result.metrics_dataframe
    if frame is None or metric not in frame or "step" not in frame:
        return {}
    frame = frame[["step", metric]].dropna()
    return {int(step): float(value) for step, value in zip(frame["step"], frame[metric]) if math.isfinite(value)}


def _last_step(result) -> int:
    frame = result.metrics_dataframe
    if frame is None or "step" not in frame:
        return 0
    steps = frame["step"].dropna()
    return int(steps.max()) if len(steps) else 0


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = [key for key in rows[0] if key != "curve"] if rows else []
    return header, [[_cell(row[key]) for key in header] for row in rows]


def trial_table_markdown(rows: list[dict[str, Any]], metric: str) -> str:
    header, cells = _table(rows)
    lines = [f"# llmft sweep: trials ranked by {metric}", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def print_trial_table(rows: list[dict[str, Any]], metric: str) -> None:
    from rich.console import Console
    from rich.table import Table

    header, cells = _table(rows)
    table = Table(title=f"llmft sweep: trials ranked by {metric}")
    for column in header:
        table.add_column(column, overflow="fold")
    for row in cells:
        table.add_row(*row)
    Console().print(table)


def curves_png(rows: list[dict[str, Any]], metric: str) -> bytes:
    """Every trial's validation curve on one chart (PNG), as `llmft compare` charts its models."""
    from matplotlib.figure import Figure  # Agg, no GUI backend or pyplot state

    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for row in rows:
        if row["curve"]:
            steps, values = zip(*row["curve"])
            label = row["trial"] + ": " + ", ".join(f"{k.rsplit('.', 1)[-1]}={_cell(row[k])}"
                                                    for k in row if "." in k)
            axes.plot(steps, values, marker="o", markersize=3, label=label)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(metric)
    axes.set_title(f"llmft sweep: {metric} per trial")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=120)
    return png.getvalue()


def export_best(rows: list[dict[str, Any]], metric: str, mode: str, sweep_dir: str) -> str:
    """Export the best checkpoint of the best trial to `<sweep>/model`."""
    from llmft.checkpoint import find_checkpoints, read_state
    from llmft.export import export_checkpoint

    scored = [row for row in rows if row[f"best_{metric}"] is not None]
    if not scored:
        raise LlmftError(f"No trial reported {metric}, so there is no best trial to export. Check the trials' "
                         f"logs under {storage.shown(join(sweep_dir, 'tune'))}.")
    sign = 1 if mode == "min" else -1
    best = min(scored, key=lambda row: sign * row[f"best_{metric}"])
    checkpoints = [(read_state(c)["metrics"].get(metric), c) for c in find_checkpoints(join(sweep_dir, "trials", best["trial"]))]
    checkpoints = [(value, c) for value, c in checkpoints if value is not None]
    if not checkpoints:
        raise LlmftError(f"Trial {best['trial']} has no checkpoint scored by {metric} to export.")
    _, checkpoint = min(checkpoints, key=lambda pair: sign * pair[0])
    out = export_checkpoint(checkpoint, join(sweep_dir, "model"))
    print(f"llmft: best trial {best['trial']} ({metric} {best[f'best_{metric}']:.4g}); exported "
          f"{storage.shown(checkpoint)} -> {storage.shown(out)}", flush=True)
    return out
