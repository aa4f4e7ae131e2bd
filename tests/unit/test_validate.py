"""`llmft validate`: the derived values and the DeepSpeed JSON it shows."""

from __future__ import annotations

from llmft.config import load_config
from llmft.validate import describe
from tests.support import REPO


def test_derived_values_and_deepspeed_json(tiny_model_dir):
    cfg = load_config(REPO / "configs/viggo/tiny-cpu.yaml", [f"model.name_or_path={tiny_model_dir}"])
    report = describe(cfg)
    derived = report["derived"]
    assert derived["world_size"] * derived["micro_batch_size"] * derived["gradient_accumulation_steps"] \
        == derived["global_batch_sequences"]
    assert derived["dtype"] == "float32"
    # The tiny model's config.json is on disk, so ZeRO's buckets are sized to its width (64).
    assert report["deepspeed"]["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    assert report["notes"] == []


def test_auto_values_are_resolved_from_the_data_and_a_hub_model_is_noted():
    cfg = load_config(REPO / "configs/viggo/tiny-cpu.yaml", ["model.name_or_path=owner/some-model",
                                                             "training.global_batch_size=auto", "training.epochs=auto"])
    report = describe(cfg)
    assert report["derived"]["epochs"] == 4
    # 0.2% of the 3000 sample rows is 6, rounded up to a multiple of workers x micro batch.
    assert report["derived"]["global_batch_sequences"] == 8
    assert any("3000 training examples" in note for note in report["notes"])
    assert any("not on disk" in note for note in report["notes"])
