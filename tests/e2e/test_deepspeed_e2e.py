"""A 1-rank, stage-0 DeepSpeed engine without its gradient all-reduce (one process, gloo, as a Ray
Train worker of world size 1 has): no collective runs in a step, and the steps equal plain
PyTorch's. About 10 s."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmft.train.deepspeed import skip_single_rank_allreduce
from llmft.train.loss import forward_loss, use_output_projection
from tests.support.batches import random_examples

pytestmark = pytest.mark.e2e


def save_tiny_llama(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(folder)
    return folder


def load(folder: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)


def test_one_rank_at_stage_0_steps_without_all_reduce_and_equals_plain_pytorch(tmp_path: Path, single_process_group,
                                                                             monkeypatch) -> None:
    import deepspeed
    import deepspeed.comm as ds_comm

    torch.manual_seed(0)
    folder = save_tiny_llama(tmp_path)
    reference, model = load(folder), load(folder)
    use_output_projection(model)
    ds_config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "train_batch_size": 8,
                 "zero_optimization": {"stage": 0}, "gradient_clipping": 0.0}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                                      config=ds_config)
    assert skip_single_rank_allreduce(engine)

    collectives = []  # each call still runs DeepSpeed's real collective; it is only recorded

    def recorded(name, collective):
        def call(*args, **kwargs):
            collectives.append(name)
            return collective(*args, **kwargs)
        return call

    for name in ("all_reduce", "all_reduce_coalesced", "inference_all_reduce"):
        monkeypatch.setattr(ds_comm, name, recorded(name, getattr(ds_comm, name)))
    data = random_examples(8, seed=1)
    cpu = torch.device("cpu")
    for _ in range(2):
        for micro in ([[i] for i in range(4)], [[i] for i in range(4, 8)]):
            loss, _ = forward_loss(engine, data, micro, pad_id=0, block_mask=True, device=cpu)
            engine.backward(loss / 100.0, scale_wrt_gas=False)
            engine.step()
            expected, _ = forward_loss(reference, data, micro, pad_id=0, block_mask=True, device=cpu)
            (expected / 100.0).backward()
        with torch.no_grad():
            for p in reference.parameters():
                p -= p.grad
                p.grad = None
    assert collectives == []
    for (name, param), ref in zip(engine.module.named_parameters(), reference.parameters()):
        torch.testing.assert_close(param.detach(), ref.detach(), rtol=1e-5, atol=1e-6, msg=name)


def test_a_sharded_stage_keeps_it(tmp_path: Path, single_process_group) -> None:
    import deepspeed

    model = load(save_tiny_llama(tmp_path))
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0), config={
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "train_batch_size": 8,
        "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False})
    assert not skip_single_rank_allreduce(engine) and engine.enable_backward_allreduce
