"""Run paths: folders and storage URIs, and the config's paths made absolute for the workers."""

from __future__ import annotations

from llmft.config import Config
from llmft.paths import absolute_paths, is_uri, join


def test_join_and_uris():
    assert is_uri("s3://bucket/x") and is_uri("gs://b") and not is_uri("/tmp/x") and not is_uri("s3-notes")
    assert join("s3://bucket/runs/", "r1") == "s3://bucket/runs/r1"
    assert join("outputs", "r1") == "outputs/r1"


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
