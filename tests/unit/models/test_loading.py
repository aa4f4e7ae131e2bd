"""Loading the model to train: embeddings grown for the task's tokens with the new rows at the mean,
a model that already has them kept as it is, and clear errors for a missing or unloadable model.
(ZeRO-3 partitioned loading runs in tests/e2e/test_models_e2e.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
)

from llmft.errors import LlmftError
from llmft.models.loading import init_new_embeddings, load_model
from llmft.models.tokenizer import add_task_tokens, load_tokenizer
from llmft.tasks import get_task
from tests.support import model_config


def _checkpointing(model: torch.nn.Module) -> bool:
    """Whether activation checkpointing is on, and then non-reentrant (ZeRO-3 needs that)."""
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):
            return module._gradient_checkpointing_func.keywords == {"use_reentrant": False}
    return False


class _Tokenizer:
    """What `init_new_embeddings` reads from a tokenizer: 100 old ids, 3 new tokens, EOS id 2."""

    eos_token_id = 2
    names = {100: "<A>", 101: "<STOP>", 102: "<B>"}

    def __len__(self):
        return 103

    def convert_ids_to_tokens(self, i):
        return self.names[i]

    def convert_tokens_to_ids(self, token):
        return {v: k for k, v in self.names.items()}[token]

    def __call__(self, text, add_special_tokens, split_special_tokens):
        assert split_special_tokens and not add_special_tokens
        return {"input_ids": {"<A>": [5, 6], "<STOP>": [7], "<B>": [8, 9, 10]}[text]}


def _resized(tied: bool) -> tuple[LlamaForCausalLM, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         tie_word_embeddings=tied))
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    model.resize_token_embeddings(103, mean_resizing=False)
    return model, old_in, old_out


@pytest.mark.parametrize("tied", [False, True])
def test_new_embedding_rows_start_at_the_mean(tied: bool) -> None:
    model, old_in, old_out = _resized(tied)
    init_new_embeddings(model, _Tokenizer(), 100, method="mean")
    new_in = model.get_input_embeddings().weight.detach()
    new_out = model.get_output_embeddings().weight.detach()
    assert new_in.shape == new_out.shape == (103, 32)
    assert torch.equal(new_in[:100], old_in)
    assert torch.allclose(new_in[100:], old_in.mean(0).expand(3, -1), atol=1e-7)
    assert torch.allclose(new_out[100:], old_out.mean(0).expand(3, -1), atol=1e-7)
    if tied:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    else:
        assert not torch.allclose(new_in[100:], new_out[100:])


@pytest.mark.parametrize("tied", [False, True])
def test_the_stop_token_starts_as_eos_and_text_tokens_as_their_pieces(tied: bool) -> None:
    model, old_in, old_out = _resized(tied)
    init_new_embeddings(model, _Tokenizer(), 100, method="text", stop_token="<STOP>")
    for new, old in ((model.get_input_embeddings().weight.detach(), old_in),
                     (model.get_output_embeddings().weight.detach(), old_out)):
        assert torch.equal(new[101], old[2])  # <STOP> is EOS at step 0, in both embeddings
        assert torch.allclose(new[100], old[[5, 6]].mean(0), atol=1e-7)
        assert torch.allclose(new[102], old[[8, 9, 10]].mean(0), atol=1e-7)


def test_load_model_resizes_and_initialises_the_new_rows(tiny_model_dir: Path) -> None:
    cfg = model_config(tiny_model_dir, "sql", attn_implementation="eager", gradient_checkpointing=True)
    tokenizer = load_tokenizer(cfg)
    added = add_task_tokens(tokenizer, get_task("sql"))
    model = load_model(cfg, tokenizer)
    reference = load_file(tiny_model_dir / "model.safetensors")
    embed = model.get_input_embeddings().weight.detach()
    head = model.get_output_embeddings().weight.detach()
    assert embed.shape[0] == head.shape[0] == len(tokenizer) == 2048 + added
    assert model.config.vocab_size == len(tokenizer)
    assert torch.equal(embed[:2048], reference["model.embed_tokens.weight"])
    stop, eos = tokenizer.convert_tokens_to_ids("<END_A>"), tokenizer.eos_token_id
    others = [i for i in range(2048, len(tokenizer)) if i != stop]
    assert torch.allclose(embed[others], reference["model.embed_tokens.weight"].mean(0).expand(added - 1, -1))
    assert torch.allclose(head[others], reference["lm_head.weight"].mean(0).expand(added - 1, -1))
    # stop_token_init: eos (the default): the task's stop token starts as EOS in both embeddings.
    assert torch.equal(embed[stop], reference["model.embed_tokens.weight"][eos])
    assert torch.equal(head[stop], reference["lm_head.weight"][eos])
    assert model.dtype == torch.float32
    assert _checkpointing(model)
    assert model.config._attn_implementation == "eager"
    assert model.llmft_hf_ds_config is None
    ids = tokenizer("<START_Q>How many?<END_Q><START_A>SELECT", return_tensors="pt")["input_ids"]
    model.train()
    model(ids, labels=ids).loss.backward()  # checkpointing (non-reentrant) runs backward
    assert model.get_input_embeddings().weight.grad[2048:].abs().sum() > 0


def test_load_model_keeps_a_model_that_already_has_the_tokens(tiny_model_dir: Path, tmp_path: Path) -> None:
    # An exported fine-tuned model already has the task rows: they must not be reset to the mean.
    cfg = model_config(tiny_model_dir, "viggo", gradient_checkpointing=False)
    tokenizer = load_tokenizer(cfg)
    add_task_tokens(tokenizer, get_task("viggo"))
    model = load_model(cfg, tokenizer)
    with torch.no_grad():
        model.get_input_embeddings().weight[-1] = 7.0
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    cfg2 = model_config(tmp_path, "viggo", gradient_checkpointing=False)
    tokenizer2 = load_tokenizer(cfg2)
    assert add_task_tokens(tokenizer2, get_task("viggo")) == 0
    model2 = load_model(cfg2, tokenizer2)
    assert torch.all(model2.get_input_embeddings().weight[-1] == 7.0)
    assert not _checkpointing(model2)


def test_missing_tiny_model_says_how_to_make_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = model_config(".cache/tiny-llama")
    with pytest.raises(LlmftError) as error:
        load_tokenizer(cfg)
    message = str(error.value)
    assert "model.name_or_path" in message and ".cache/tiny-llama" in message
    assert "configs/test.yaml" in message
    assert "llmft models make-tiny --out .cache/tiny-llama" in message
    with pytest.raises(LlmftError, match="make-tiny"):
        load_model(cfg, None)  # type: ignore[arg-type]


def test_folder_without_weights_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    cfg = model_config(broken)
    with pytest.raises(LlmftError, match=r"model\.name_or_path .*lacks weights"):
        load_model(cfg, AutoTokenizer.from_pretrained(tiny_model_dir))
    (broken / "config.json").unlink()
    with pytest.raises(LlmftError, match=r"lacks config\.json and weights"):
        load_model(cfg, AutoTokenizer.from_pretrained(tiny_model_dir))
    with pytest.raises(LlmftError, match=r"model\.name_or_path .*could not load the tokenizer"):
        load_tokenizer(cfg)


def test_unreachable_hub_id_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # Offline mode fails at once instead of retrying for a minute; the message is the same.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = model_config("meta-llama/Llama-2-7b-hf")
    with pytest.raises(LlmftError) as error:
        load_tokenizer(cfg)
    message = str(error.value)
    assert "model.name_or_path = 'meta-llama/Llama-2-7b-hf'" in message
    assert "hub access" in message and "import-gguf" in message
