"""The config's paths made absolute on the driver for the workers; storage URIs and hub ids stay."""

from __future__ import annotations

from llmft.config import Config
from llmft.paths import absolute_paths


def test_relative_paths_become_absolute_and_uris_and_hub_ids_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    cfg = Config.model_validate({"model": {"name_or_path": "model"},
                                 "data": {"task": "viggo", "train": "./train.jsonl", "valid": "sample:viggo",
                                          "test": "GEM/viggo", "cache_dir": "cache"},
                                 "output": {"dir": "s3://bucket/runs"}})
    out = absolute_paths(cfg)
    assert out.model.name_or_path == str(tmp_path / "model")
    assert out.data.train == str(tmp_path / "train.jsonl")
    assert (out.data.valid, out.data.test, out.output.dir) == ("sample:viggo", "GEM/viggo", "s3://bucket/runs")
    assert out.data.cache_dir == str(tmp_path / "cache")
    local = absolute_paths(cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": "outputs"})}))
    assert local.output.dir == str(tmp_path / "outputs")
