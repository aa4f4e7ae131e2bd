"""Run folders: a fresh run gets a folder of its own, even when started in the same second as
another, and never writes into an existing run unless resumed."""

from __future__ import annotations

import pytest

from llmft.config import Config
from llmft.errors import LlmftError
from llmft.train.allocator import CPU_WORKER_MALLOC
from llmft.train.driver import claim_run_folder, find_user_error, resolve_run, worker_env


def config(out, run_name=None) -> Config:
    return Config.model_validate({"model": {"name_or_path": "/models/tiny-llama"},
                                  "data": {"task": "viggo", "train": "sample:viggo"},
                                  "output": {"dir": str(out), "run_name": run_name}})


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    names = {resolve_run(config(tmp_path), None)[0] for _ in range(50)}
    assert len(names) == 50
    assert all(name.startswith("viggo-tiny-llama-") for name in names)


def test_a_given_run_name_that_holds_a_run_is_refused_unless_resumed(tmp_path):
    assert resolve_run(config(tmp_path, "mine"), None) == ("mine", None)
    (tmp_path / "mine" / "model").mkdir(parents=True)
    with pytest.raises(LlmftError, match=r"mine already exists and holds a finished run.*--resume latest"):
        resolve_run(config(tmp_path, "mine"), None)
    with pytest.raises(LlmftError, match="no complete checkpoint"):  # --resume latest reuses the folder
        resolve_run(config(tmp_path, "mine"), "latest")


def test_only_one_of_two_runs_claims_a_run_folder(tmp_path):
    run_dir = str(tmp_path / "out" / "mine")
    claim_run_folder(run_dir)
    with pytest.raises(LlmftError, match="already exists"):
        claim_run_folder(run_dir)


def test_a_workers_user_error_reaches_the_user_whole():
    """Ray's WorkerGroupError quotes a worker's error shortened ("..."); the error object it holds
    in `worker_failures` has the whole message, and that is what the user gets."""
    inner = LlmftError("model.name_or_path = '/models/x': could not load the model from this folder: " + "y" * 300)

    class WorkerGroupError(Exception):
        pass

    outer = WorkerGroupError("Training failed due to worker errors: LlmftError: model.name_or_...")
    outer.worker_failures = {0: RuntimeError("wrapped")}
    outer.worker_failures[0].__cause__ = inner
    assert find_user_error(outer) == str(inner)
    assert find_user_error(RuntimeError("nothing of ours")) is None



def test_cpu_workers_get_the_malloc_settings_and_the_users_own_values_win(monkeypatch):
    for name in CPU_WORKER_MALLOC:
        monkeypatch.delenv(name, raising=False)
    assert {k: worker_env(None, cpu=True)[k] for k in CPU_WORKER_MALLOC} == CPU_WORKER_MALLOC
    assert not set(CPU_WORKER_MALLOC) & set(worker_env(None, cpu=False))  # GPU workers keep glibc's defaults
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert worker_env(None, cpu=True)["MALLOC_MMAP_THRESHOLD_"] == "65536"
