"""`llmft eval`'s checks before any Ray work, and how results are labelled."""

from __future__ import annotations

import pytest

from llmft.errors import LlmftError
from llmft.eval.run import label_for, run_eval
from tests.support.tiny_tokenizer import make_cfg


def test_labels_name_the_run_of_an_export_and_the_shots():
    assert label_for("/runs/viggo-tiny-20260101/model", 0) == "viggo-tiny-20260101"
    assert label_for("/models/smollm2", 3) == "smollm2 (3-shot)"


def test_an_unset_split_fails_before_ray_starts(tmp_path, tiny_model_dir):
    cfg = make_cfg(tmp_path, "viggo", "sample:viggo")
    with pytest.raises(LlmftError, match="data.test is not set"):
        run_eval(cfg, model=str(tiny_model_dir), split="test", limit=2, few_shot=0, out=None, address=None)


def test_a_missing_model_fails_before_ray_starts(tmp_path):
    cfg = make_cfg(tmp_path, "viggo", "sample:viggo", test="sample:viggo")
    with pytest.raises(LlmftError, match="model.name_or_path"):
        run_eval(cfg, model=str(tmp_path / "no-model"), split="test", limit=2, few_shot=0, out=None, address=None)
