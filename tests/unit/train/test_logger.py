"""metrics.jsonl: one record per logged step, rewritten on resume, and the progress line."""

from __future__ import annotations

import json

from llmft.config import Config
from llmft.train.logger import MetricsLogger, progress_line, read_metrics
from tests.support.s3 import s3_server  # noqa: F401  (fixture)


def config(**logging) -> Config:
    return Config.model_validate({"model": {"name_or_path": "m"}, "data": {"task": "viggo", "train": "sample:viggo"},
                                  "logging": {"progress_bar": False, **logging}})


def test_rank_0_writes_one_record_per_log_without_none_values(tmp_path):
    logger = MetricsLogger(config(), run_dir=str(tmp_path / "run"), enabled=True, total_steps=3, resumed_at=0)
    logger.log(1, {"train_loss": 2.5, "mfu": None, "step": 99})
    logger.log(2, {"train_loss": 2.0, "epoch": 0.5})
    logger.close()
    assert read_metrics(tmp_path / "run") == [{"step": 1, "train_loss": 2.5}, {"step": 2, "train_loss": 2.0, "epoch": 0.5}]


def test_other_ranks_write_nothing(tmp_path):
    logger = MetricsLogger(config(), run_dir=str(tmp_path / "run"), enabled=False, total_steps=3, resumed_at=0)
    logger.log(1, {"train_loss": 1.0})
    logger.close()
    assert not (tmp_path / "run").exists()


def test_a_resume_drops_the_records_after_the_restored_step(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train_loss": 10 - s}) + "\n" for s in range(1, 7)))
    logger = MetricsLogger(config(), run_dir=str(run), enabled=True, total_steps=8, resumed_at=4)
    logger.log(5, {"train_loss": 0.5})
    logger.close()
    assert [(r["step"], r["train_loss"]) for r in read_metrics(run)] == [(1, 9), (2, 8), (3, 7), (4, 6), (5, 0.5)]


def test_progress_line_shows_the_known_figures():
    line = progress_line(5, 10, {"train_loss": 1.23456, "lr": 1e-4, "valid_loss": float("nan"),
                                 "trained_tokens_per_second": 12345.6}, elapsed=61.2)
    assert line.startswith("[##########----------] step 5/10")
    assert "loss 1.2346" in line and "lr 1.00e-04" in line and "12,346 trained tok/s" in line
    assert "valid_loss" not in line and line.endswith("| 61s")


def test_a_run_in_a_bucket_uploads_its_metrics_and_resumes_from_them(s3_server):  # noqa: F811
    run = s3_server.uri(s3_server.new_bucket(), "runs/r1")
    logger = MetricsLogger(config(), run_dir=run, enabled=True, total_steps=8, resumed_at=0)
    for step in range(1, 5):
        logger.log(step, {"train_loss": 10 - step})
    logger.sync()  # before a checkpoint: what was logged so far is in the bucket
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]
    logger.log(5, {"train_loss": 5})
    logger.close()
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5]
    resumed = MetricsLogger(config(), run_dir=run, enabled=True, total_steps=8, resumed_at=3)
    resumed.log(4, {"train_loss": 0.5})
    resumed.close()
    assert [(r["step"], r["train_loss"]) for r in read_metrics(run)] == [(1, 9), (2, 8), (3, 7), (4, 0.5)]
