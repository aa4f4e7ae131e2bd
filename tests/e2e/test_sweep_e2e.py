"""`llmft sweep` end to end: Ray Tune trials, each a Ray Train run of 2 workers with DeepSpeed
ZeRO-3, on the tiny Llama; stopped with Ctrl+C mid-trial, then resumed.

One sweep serves every test (3 learning rates, ASHA on, 8 steps per trial). What these catch:
- a stopped sweep that cannot resume, retrains a finished trial, or restarts an unfinished trial
  from scratch instead of its own latest checkpoint;
- trials that run more at once than the cluster holds (2 CPUs, 2 workers per trial: one at a time),
  or never start because the trial process itself takes a CPU from the workers;
- ASHA not seeing the validation metric the workers report (the hopeless trial would run on), and
  a trial after an ASHA-stopped one never starting (the stopped run's workers never released);
- no trial table, no curves chart, or an export that is not the best trial's best checkpoint;
- an unknown key in the search space reaching Ray instead of exiting 2 with its name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llmft.checkpoint import find_checkpoints, read_state
from tests.support import REPO

pytestmark = pytest.mark.e2e

MAX_STEPS = 8
# The second learns nothing: ASHA stops it at step 2, where the first trial did better.
LEARNING_RATES = [1e-3, 1e-6, 5e-3]


def write_sweep_config(folder: Path, model_dir: Path, **sweep) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(REPO / "configs/viggo/tiny-cpu.yaml"),
        "model": {"name_or_path": str(model_dir)},
        "training": {"max_steps": MAX_STEPS, "eval_every_steps": 2, "checkpoint_every_steps": 2,
                     "warmup_steps": 0, "generation_eval_every_steps": None},
        "output": {"dir": str(folder / "out"), "run_name": "lr-sweep", "keep_checkpoints": 10},
        "logging": {"progress_bar": False},
        "sweep": {"grid": {"training.learning_rate": LEARNING_RATES}, "early_stopping": True,
                  "grace_period": 2, **sweep},
    }))
    return path


def llmft(log: Path, *args: str) -> subprocess.Popen:
    """`llmft ARGS` in the background, its output (the workers' too, a lot) going to `log`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "llmft.cli", *args], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def stop_tree(process: subprocess.Popen) -> None:
    """End `process` and everything it started (its embedded Ray), if a wait above gave up."""
    import psutil

    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(tree, timeout=10)


def checkpoint_steps(run_dir: Path) -> list[int]:
    return [read_state(c)["position"]["global_step"] for c in find_checkpoints(run_dir)] if run_dir.exists() else []


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def sweep(tiny_model_dir, tmp_path_factory):
    """The sweep, stopped with SIGINT once the third trial has saved a checkpoint, then resumed."""
    folder = tmp_path_factory.mktemp("sweep")
    config = write_sweep_config(folder, tiny_model_dir)
    sweep_dir = folder / "out" / "lr-sweep"
    trials = sweep_dir / "trials"

    first, second = llmft(folder / "first.log", "sweep", str(config)), None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.poll() is None:
            folders = sorted(trials.glob("*")) if trials.exists() else []
            # Trials run one at a time here: the third one saving a checkpoint means the others ended.
            if len(folders) >= 3 and any(0 < step < MAX_STEPS for step in checkpoint_steps(folders[2])):
                break
            time.sleep(0.5)
        assert first.poll() is None, "the sweep ended before it could be interrupted:\n" + \
            (folder / "first.log").read_text()[-4000:]
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
        first_out = (folder / "first.log").read_text()
        folders = sorted(trials.glob("*"))
        stopped = {"returncode": first.returncode, "output": first_out,
                   "table": json.loads((sweep_dir / "trials.json").read_text()),
                   "finished_files": {f.name: snapshot(f) for f in folders[:2]},
                   "steps": {f.name: checkpoint_steps(f) for f in folders}}

        second = llmft(folder / "second.log", "sweep", str(config), "--resume")
        second.wait(timeout=420)
        second_out = (folder / "second.log").read_text()
    finally:
        for process in (first, second):
            if process is not None:
                stop_tree(process)
    return {"dir": sweep_dir, "config": config, "stopped": stopped, "returncode": second.returncode,
            "output": second_out, "table": json.loads((sweep_dir / "trials.json").read_text())}


def test_stopped_sweep_resumes_without_retraining_finished_trials(sweep):
    stopped = sweep["stopped"]
    assert stopped["returncode"] == 130, stopped["output"][-4000:]
    assert "--resume" in stopped["output"]
    status = {row["trial"]: row["status"] for row in stopped["table"]}
    first, second, third = sorted(status)
    assert (status[first], status[second], status[third]) == ("completed", "stopped early", "interrupted"), status
    assert 0 < max(stopped["steps"][third]) < MAX_STEPS

    assert sweep["returncode"] == 0, sweep["output"][-4000:]
    trials = sweep["dir"] / "trials"
    # The finished trials were not run again: not one of their files was written after the stop.
    for trial in (first, second):
        assert snapshot(trials / trial) == stopped["finished_files"][trial], trial
    # The interrupted trial went on from its own checkpoint: the checkpoints from before the stop are
    # there, and no step was checkpointed twice (a restart from scratch would save step 2 again).
    steps = checkpoint_steps(trials / third)
    assert set(stopped["steps"][third]) <= set(steps)
    assert sorted(steps) == sorted(set(steps)) and max(steps) == MAX_STEPS, steps
    losses = [json.loads(line) for line in (trials / third / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in losses if "train_loss" in r) == list(range(1, MAX_STEPS + 1))


def test_table_curves_early_stopping_and_best_export(sweep):
    rows = {row["trial"]: row for row in sweep["table"]}
    first, second, third = sorted(rows)
    assert [rows[t]["training.learning_rate"] for t in (first, second, third)] == LEARNING_RATES
    # ASHA saw the reported valid_loss and stopped the trial that learns nothing at its first rung,
    # and the trial after it still got the workers.
    assert rows[second]["status"] == "stopped early" and rows[second]["steps"] == 2, rows[second]
    assert rows[first]["status"] == rows[third]["status"] == "completed"
    assert rows[first]["steps"] == rows[third]["steps"] == MAX_STEPS
    for row in rows.values():
        assert row["best_valid_loss"] == min(value for _, value in row["curve"])
    output = sweep["output"]
    assert "llmft sweep: trials ranked by valid_loss" in output and all(t in output for t in rows)
    assert "| trial | training.learning_rate | best_valid_loss | steps | status |" in (sweep["dir"] / "trials.md").read_text()
    assert (sweep["dir"] / "valid_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The export is the best trial's best checkpoint, and plain transformers loads it.
    best = min(rows.values(), key=lambda row: row["best_valid_loss"])
    export = json.loads((sweep["dir"] / "model" / "llmft_export.json").read_text())
    checkpoint = Path(export["checkpoint"])
    assert checkpoint.parent == sweep["dir"] / "trials" / best["trial"]
    assert read_state(checkpoint)["metrics"]["valid_loss"] == pytest.approx(best["best_valid_loss"])
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(sweep["dir"] / "model").config.vocab_size > 0


def test_trials_ran_one_at_a_time_as_the_cluster_holds(sweep):
    """2 CPUs and 2 one-CPU workers per trial: Tune's own records must show no overlap."""
    spans = []
    for result_file in (sweep["dir"] / "tune").glob("*/result.json"):
        records = [json.loads(line) for line in result_file.read_text().splitlines() if line]
        starts = [r["timestamp"] - r["time_total_s"] for r in records]
        spans.append((min(starts), max(r["timestamp"] for r in records)))
    assert len(spans) == 3
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - 1, spans  # timestamps are whole seconds


def test_unknown_key_in_the_search_space_exits_2_naming_it(tiny_model_dir, tmp_path):
    config = write_sweep_config(tmp_path, tiny_model_dir)
    config.write_text(config.read_text().replace("training.learning_rate:", "training.learnin_rate:"))
    done = llmft(tmp_path / "bad.log", "sweep", str(config))
    done.wait(timeout=300)
    out = (tmp_path / "bad.log").read_text()
    assert done.returncode == 2, out[-3000:]
    assert "training.learnin_rate" in out and "Did you mean `training.learning_rate`" in out and "Traceback" not in out
    assert not (tmp_path / "out").exists()
