"""The placement check fails in seconds with what the cluster lacks (no Ray started here)."""

from __future__ import annotations

import pytest
import ray

from llmft.cluster import check_placement
from llmft.config import Config
from llmft.errors import LlmftError


def config(**scaling) -> Config:
    return Config.model_validate({"model": {"name_or_path": "m"}, "data": {"task": "viggo", "train": "t.jsonl"},
                                  "training": {"global_batch_size": 16}, "scaling": scaling})


def test_missing_resources_are_named(monkeypatch):
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0, "GPU": 2.0})
    check_placement(config(num_workers=4))
    with pytest.raises(LlmftError, match=r"CPU: needs 8, cluster has 4"):
        check_placement(config(num_workers=4, cpus_per_worker=2))
    with pytest.raises(LlmftError, match=r"GPU: needs 4, cluster has 2"):
        check_placement(config(num_workers=4, use_gpu=True))
    with pytest.raises(LlmftError, match=r"accelerator_type:A10G: needs 0.04, cluster has 0"):
        check_placement(config(num_workers=4, resources_per_worker={"accelerator_type:A10G": 0.01}))
