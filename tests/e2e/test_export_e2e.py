"""`llmft export` from checkpoints of ZeRO-0, ZeRO-2 and ZeRO-3, untied and tied embeddings, with
real DeepSpeed in one process (export needs no Ray: it reads the files).

What these catch: an export that reads the wrong DeepSpeed files for a stage (ZeRO-0 keeps the
whole model in `mp_rank_00_model_states.pt`; ZeRO-1/2/3 keep the fp32 master weights in the
per-rank optimizer shards), that mishandles the lm_head of a tied-embedding model such as
SmolLM2 (safetensors refuses the shared tensor; transformers re-ties it on load), or whose
weights are not the trained ones; a save whose manifest does not match its files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmft.checkpoint import Position, is_complete, save
from llmft.config import Config
from llmft.export import export_checkpoint
from llmft.models.loading import load_model
from llmft.models.tokenizer import load_task_tokenizer
from llmft.train.deepspeed import build_deepspeed_config
from llmft.train.optim import build_optimizer, parameter_groups

pytestmark = pytest.mark.e2e

TEXT = "<START_TEXT>A great game from 2010.<END_TEXT><START_MR>inform(name[Portal], rating[excellent])<END_MR>"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[bool, Path]:
    from llmft.models.tiny import make_tiny_llama

    root = tmp_path_factory.mktemp("export-models")
    return {tied: make_tiny_llama(root / f"tied-{tied}", tie_embeddings=tied) for tied in (False, True)}


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_export_holds_the_trained_weights(zero_stage, tied, tiny_models, tmp_path, single_process_group):
    import deepspeed
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    cfg = Config.model_validate({
        "model": {"name_or_path": str(tiny_models[tied]), "dtype": "float32", "gradient_checkpointing": False},
        "data": {"task": "viggo", "train": "sample:viggo@train"},
        "training": {"micro_batch_size": 1, "global_batch_size": 1, "learning_rate": 1e-2},
        "deepspeed": {"zero_stage": zero_stage}, "scaling": {"num_workers": 1},
    })
    tokenizer = load_task_tokenizer(cfg)
    ds_config = build_deepspeed_config(cfg, hidden_size=64)
    model = load_model(cfg, tokenizer, ds_config, torch.float32)
    groups = parameter_groups(model, cfg.training.weight_decay)
    engine, *_ = deepspeed.initialize(model=model, optimizer=build_optimizer(groups, cfg), model_parameters=groups,
                                      config=ds_config)
    ids = tokenizer([TEXT], return_tensors="pt")["input_ids"]
    engine.eval()
    with torch.no_grad():
        before = engine(input_ids=ids).logits
    engine.train()
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    engine.step()
    engine.eval()
    with torch.no_grad():
        trained = engine(input_ids=ids).logits
    assert not torch.allclose(before, trained, atol=1e-3)  # the step changed the model

    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    save(engine, tokenizer, cfg, Position(global_step=1), {}, checkpoint, rank=0, world_size=1)
    assert is_complete(checkpoint)
    out = Path(export_checkpoint(checkpoint, tmp_path / "export"))

    shards = sorted(out.glob("*.safetensors"))
    names = {name for shard in shards for name in safe_open(str(shard), "pt").keys()}
    assert ("lm_head.weight" in names) != tied
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # a plain load, as a user's, not one partitioned under ZeRO-3's zero.Init
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert exported.config.tie_word_embeddings == tied
    assert exported.get_input_embeddings().weight.shape[0] == len(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=ids).logits, trained, rtol=1e-5, atol=1e-5)
    del engine, model
