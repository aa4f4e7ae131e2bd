"""The chunked loss under real DeepSpeed ZeRO-3 (one process, gloo, as a Ray Train worker of world
size 1 has): the output projection is partitioned outside its module's forward, so the loss
gathers it and hands its gradient to ZeRO-3 from its own backward. About 15 s.

What it catches: a loss that reads the partitioned (empty) projection, a projection gradient that
never reaches ZeRO-3's partitions (the weights would not move), or one counted twice when the
projection is tied to the input embeddings (SmolLM2) — each as weights that differ from the same
steps taken by plain PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmft.train.loss import forward_loss, use_output_projection
from tests.support.batches import random_examples

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_zero3_steps_with_the_chunked_loss_equal_plain_pytorch(tied: bool, tmp_path: Path, single_process_group) -> None:
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    reference = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    ds_config = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1, "train_batch_size": 8,
                 "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
                 "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False, "gradient_clipping": 0.0}
    keep = HfDeepSpeedConfig(ds_config)  # noqa: F841 - partitions the model while it loads
    model = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    use_output_projection(model)
    assert model.get_output_embeddings().weight.ds_status is not None  # really partitioned
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                                      config=ds_config)
    data = random_examples(8, seed=1)
    rows = [[i] for i in range(8)]
    cpu = torch.device("cpu")
    for _ in range(2):
        loss, _ = forward_loss(engine, data, rows, pad_id=0, block_mask=True, device=cpu)
        engine.backward(loss / 100.0, scale_wrt_gas=False)
        engine.step()
        expected, _ = forward_loss(reference, data, rows, pad_id=0, block_mask=True, device=cpu)
        (expected / 100.0).backward()
        with torch.no_grad():
            for p in reference.parameters():
                p -= p.grad
                p.grad = None
        assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    for (name, param), ref in zip(engine.module.named_parameters(), reference.parameters()):
        torch.testing.assert_close(safe_get_full_fp32_param(param), ref.detach(), rtol=1e-4, atol=1e-5, msg=name)
