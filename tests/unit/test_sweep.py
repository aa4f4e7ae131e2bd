"""The sweep's search space, concurrency, trial table and best-trial choice, without Ray.

What these catch: a search-space key or value the config would refuse reaching Ray Tune (it
must exit 2 first, naming the key); a grid that does not try every combination; more trials at
once than the cluster can place (or fewer than it can); a trial table whose status or best
metric misreads Tune's records.
"""

from __future__ import annotations

import pandas as pd
import pytest

from llmft.config import Config
from llmft.errors import LlmftError
from llmft.sweep import COMPLETED, concurrent_trials, trial_rows, trial_table_markdown, trial_values


def sweep_config(grid=None, choice=None, **sweep) -> Config:
    return Config.model_validate({
        "model": {"name_or_path": "unused"},
        "data": {"task": "viggo", "train": "sample:viggo@train", "valid": "sample:viggo@valid"},
        "scaling": {"num_workers": 2}, "training": {"global_batch_size": 8},
        "sweep": {"grid": grid or {}, "choice": choice or {}, **sweep},
        "source": "configs/sweep.yaml",
    })


def test_grid_and_choice_give_every_combination():
    cfg = sweep_config(grid={"training.learning_rate": [1e-5, 2e-5, 5e-5], "training.epochs": [2, 4]},
                       choice={"training.warmup_steps": [0, 3]})
    values = trial_values(cfg)
    assert len(values) == 12
    assert {(v["training.learning_rate"], v["training.epochs"], v["training.warmup_steps"]) for v in values} == {
        (lr, epochs, warmup) for lr in (1e-5, 2e-5, 5e-5) for epochs in (2, 4) for warmup in (0, 3)}


@pytest.mark.parametrize("grid, message", [
    ({"training.learnin_rate": [1e-5]}, r"sweep.grid names `training.learnin_rate`.*Did you mean `training.learning_rate`"),
    ({"trainer.lr": [1e-5]}, r"`trainer.lr`, which is not a config key"),
    ({"output.dir": ["/tmp/x"]}, r"`output.dir`, which the sweep sets itself"),
    ({"training.learning_rate": [1e-5, 7.0]}, r"`training.learning_rate` = 7.0 is invalid"),
    ({"training.learning_rate": []}, r"sweep.grid.training.learning_rate has no values"),
    ({"training.global_batch_size": [8, 7]}, r"global_batch_size \(7\) must be a positive multiple"),
])
def test_a_bad_search_space_is_a_user_error_naming_the_key(grid, message):
    with pytest.raises(LlmftError, match=message):
        trial_values(sweep_config(grid=grid))


def test_a_key_in_choice_is_checked_too_and_no_space_is_an_error():
    with pytest.raises(LlmftError, match=r"sweep.choice names `training.sed`"):
        trial_values(sweep_config(choice={"training.sed": [1, 2]}))
    with pytest.raises(LlmftError, match="no search space"):
        trial_values(sweep_config())


def test_as_many_trials_run_at_once_as_the_cluster_holds():
    cfg = sweep_config(grid={"training.learning_rate": [1e-5, 2e-5]})
    trials = [sweep_config(grid={"training.learning_rate": [1e-5]})]  # 2 workers x 1 CPU each
    assert concurrent_trials(cfg, trials, {"CPU": 2.0}) == 1
    assert concurrent_trials(cfg, trials, {"CPU": 9.0}) == 4
    gpu = Config.model_validate({**trials[0].model_dump(), "scaling": {"num_workers": 4, "use_gpu": True}, "training": {"global_batch_size": 8}})
    assert concurrent_trials(cfg, [gpu], {"CPU": 128.0, "GPU": 8.0}) == 2  # GPUs limit
    # The largest trial of the space decides (workers may be swept).
    assert concurrent_trials(cfg, [*trials, gpu], {"CPU": 128.0, "GPU": 8.0}) == 2
    assert concurrent_trials(sweep_config(grid={"training.seed": [1]}, max_concurrent_trials=3), trials, {"CPU": 2.0}) == 3


class FakeResult:
    """The parts of a Ray Tune `Result` the table reads (Tune's records of one trial)."""

    def __init__(self, trial_id, lr, reports, last, error=None):
        self.config = {"training.learning_rate": lr}
        self.metrics = dict(last)
        self.metrics_dataframe = pd.DataFrame(reports) if reports else None
        self.error = error
        self.path = f"/sweep/tune/{trial_id}"


def test_trial_table_reads_status_best_metric_and_steps_from_tunes_records(tmp_path):
    results = [
        FakeResult("a_00000", 1e-3, [{"step": 2, "valid_loss": 3.0}, {"step": 4, "valid_loss": 2.5},
                                     {"step": 4, "valid_loss": 2.4}, {"step": 6, "valid_loss": 2.6}],
                   {COMPLETED: True, "done": True}),  # step 4 reported again after a resume: the last counts
        FakeResult("a_00001", 1e-2, [{"step": 2, "valid_loss": 4.0}], {"done": True}),  # ASHA stopped it
        FakeResult("a_00002", 3e-3, [{"step": 2, "valid_loss": 3.5}], {"done": False}),
        FakeResult("a_00003", 5e-3, None, {}, error=RuntimeError("boom")),
        FakeResult("a_00004", 7e-3, None, {}),
        FakeResult("a_00005", 9e-3, None, {}),  # stopped after a checkpoint Tune had not recorded yet
    ]
    from llmft.checkpoint import Position, write_manifest, write_state
    from tests.support import model_config

    checkpoint = tmp_path / "trials" / "a_00005" / "checkpoint_1"
    checkpoint.mkdir(parents=True)
    write_state(checkpoint, model_config("m"), Position(global_step=2), {}, world_size=1)
    write_manifest(checkpoint, rank=0, world_size=1)
    rows = trial_rows(results, ["training.learning_rate"], "valid_loss", "min", str(tmp_path / "trials"))
    by_trial = {row["trial"]: row for row in rows}
    assert by_trial["a_00000"]["best_valid_loss"] == 2.4 and by_trial["a_00000"]["steps"] == 6
    assert by_trial["a_00000"]["curve"] == [(2, 3.0), (4, 2.4), (6, 2.6)]
    assert [by_trial[t]["status"] for t in sorted(by_trial)] == [
        "completed", "stopped early", "interrupted", "error", "pending", "interrupted"]
    assert trial_rows(results[:2], ["training.learning_rate"], "valid_loss", "max", str(tmp_path / "trials"))[0]["best_valid_loss"] == 3.0
    table = trial_table_markdown(rows, "valid_loss")
    assert "| trial | training.learning_rate | best_valid_loss | steps | status |" in table
    assert "| a_00000 | 0.001 | 2.4 | 6 | completed |" in table
